"""
Category tables of the builtin datasets, kept as JSON files beside this module (one object per
category, in the contiguous training-label order) and read on first use.
"""
import functools
import json
import os
from typing import List

__all__ = [
    "ade20k_150_categories",
    "ade20k_full_categories",
    "ade20k_instance_categories",
    "coco_stuff_categories",
    "mapillary_vistas_categories",
]

_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _load(file_name: str, expected_count: int) -> tuple:
    path = os.path.join(_HERE, file_name)
    with open(path, encoding="utf-8") as f:
        categories = json.load(f)["categories"]
    if len(categories) != expected_count:
        raise ValueError(f"{path} lists {len(categories)} categories, expected {expected_count}")
    return tuple(categories)


def _copy(categories) -> List[dict]:
    # Callers get fresh dicts so that editing a returned table cannot corrupt the cache.
    return json.loads(json.dumps(categories))


def ade20k_150_categories() -> List[dict]:
    """150 dicts {id, name, isthing, color}; id is the contiguous label (raw ADE label - 1)."""
    return _copy(_load("ade20k_150.json", 150))


def ade20k_full_categories() -> List[dict]:
    """847 dicts {id, name}; the list position is the label, id the original ADE20K object id."""
    return _copy(_load("ade20k_full_847.json", 847))


def ade20k_instance_categories() -> List[dict]:
    """100 dicts {instance_id, name, ade20k_150_id, ade20k_full_ids} for annotations_instance."""
    return _copy(_load("ade20k_instance_100.json", 100))


def coco_stuff_categories() -> List[dict]:
    """171 dicts {id, name, isthing[, supercategory]} of COCO-Stuff (80 things, 91 stuff)."""
    return _copy(_load("coco_stuff_171.json", 171))


def mapillary_vistas_categories() -> List[dict]:
    """65 dicts {id, name, supercategory, isthing, color} of Mapillary Vistas v1.2."""
    return _copy(_load("mapillary_vistas_65.json", 65))
