"""
Reading COCO-panoptic-format annotations (json + PNG folder) together with a folder of semantic
PNGs of the same names, as used by the COCO, ADE20K and Mapillary Vistas panoptic registrations.
"""
import json
import os
from typing import Dict, List, Optional, Sequence

from .catalog import register_dataset, require_first_record_files, require_paths

__all__ = ["load_panoptic_json_with_sem_seg", "panoptic_metadata", "register_panoptic_with_sem_seg"]


def panoptic_metadata(
    categories: Sequence[dict], every_class_is_a_thing_class: bool = False
) -> dict:
    """
    Metadata of a panoptic dataset whose contiguous ids follow the order of `categories`
    (dicts with id, name, color, isthing).

    `stuff_classes` lists every class and `stuff_dataset_id_to_contiguous_id` maps every class,
    so that the semantic-segmentation evaluator can score the same predictions; `thing_*` list only
    the thing classes unless `every_class_is_a_thing_class` (Mapillary Vistas registers all 65
    names as thing names).
    """
    things = [c for c in categories if c["isthing"]]
    listed_as_things = categories if every_class_is_a_thing_class else things
    return {
        "thing_classes": [c["name"] for c in listed_as_things],
        "thing_colors": [c["color"] for c in listed_as_things],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [c["color"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def load_panoptic_json_with_sem_seg(
    dataset_name: str,
    root: str,
    readme_section: str,
    json_file: str,
    image_dir: str,
    panoptic_dir: str,
    sem_seg_dir: str,
    metadata: dict,
    integer_image_ids: bool,
    made_by: Optional[Dict[str, str]] = None,
) -> List[dict]:
    """
    Returns Detectron2 dicts with file_name (image_dir/<name>.jpg), image_id, pan_seg_file_name,
    sem_seg_file_name and segments_info whose category_id is the contiguous id and which carry
    `isthing`. COCO image ids are integers; ADE20K and Mapillary keep their string ids
    (`integer_image_ids`). `made_by` names the preparation script of the folders/files that
    are generated rather than downloaded (keys: "json", "panoptic", "sem_seg").
    """
    made_by = made_by or {}

    def what(key: str, description: str) -> str:
        return f"{description}, made by {made_by[key]}" if key in made_by else description

    require_paths(
        dataset_name,
        root,
        [
            (json_file, what("json", "panoptic annotation json")),
            (image_dir, "image folder"),
            (panoptic_dir, what("panoptic", "panoptic PNG folder")),
            (sem_seg_dir, what("sem_seg", "semantic PNG folder")),
        ],
        readme_section,
    )
    with open(json_file) as f:
        annotations = json.load(f)["annotations"]

    thing_ids = metadata["thing_dataset_id_to_contiguous_id"]
    stuff_ids = metadata["stuff_dataset_id_to_contiguous_id"]

    def to_contiguous(segment: dict, file_name: str) -> dict:
        category_id = segment["category_id"]
        if category_id in thing_ids:
            return dict(segment, category_id=thing_ids[category_id], isthing=True)
        if category_id in stuff_ids:
            return dict(segment, category_id=stuff_ids[category_id], isthing=False)
        raise ValueError(
            f"{json_file}: segment {segment.get('id')} of {file_name} "
            f"has category_id {category_id}, "
            f"which is not a category of dataset '{dataset_name}'"
        )

    records = []
    for annotation in annotations:
        file_name = annotation["file_name"]
        image_id = annotation["image_id"]
        records.append(
            {
                "file_name": os.path.join(image_dir, os.path.splitext(file_name)[0] + ".jpg"),
                "image_id": int(image_id) if integer_image_ids else image_id,
                "pan_seg_file_name": os.path.join(panoptic_dir, file_name),
                "sem_seg_file_name": os.path.join(sem_seg_dir, file_name),
                "segments_info": [to_contiguous(s, file_name) for s in annotation["segments_info"]],
            }
        )
    require_first_record_files(
        dataset_name,
        records,
        {
            "file_name": "image",
            "pan_seg_file_name": "panoptic PNG",
            "sem_seg_file_name": "semantic PNG",
        },
        readme_section,
    )
    return records


def register_panoptic_with_sem_seg(
    name: str,
    root: str,
    readme_section: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    semantic_root: str,
    panoptic_json: str,
    instances_json: Optional[str],
    *,
    evaluator_type: str,
    ignore_label: int,
    integer_image_ids: bool,
    made_by: Optional[Dict[str, str]] = None,
    **extra_metadata,
) -> None:
    """
    Register a dataset read by :func:`load_panoptic_json_with_sem_seg` (see there for
    `integer_image_ids` and `made_by`), with `metadata` (:func:`panoptic_metadata`), the files
    and settings its evaluators read, and `extra_metadata`. `root` and `readme_section` are only
    named in the error for missing files.
    """
    register_dataset(
        name,
        lambda: load_panoptic_json_with_sem_seg(
            name,
            root,
            readme_section,
            panoptic_json,
            image_root,
            panoptic_root,
            semantic_root,
            metadata,
            integer_image_ids=integer_image_ids,
            made_by=made_by,
        ),
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type=evaluator_type,
        ignore_label=ignore_label,
        label_divisor=1000,
        **extra_metadata,
        **metadata,
    )
