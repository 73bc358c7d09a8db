"""Mapillary Vistas v1.2 panoptic (65 classes): `mapillary_vistas_panoptic_{train,val}`."""
import os

from .catalog import datasets_root
from .categories import mapillary_vistas_categories
from .panoptic_json import panoptic_metadata, register_panoptic_with_sem_seg

__all__ = [
    "MAPILLARY_VISTAS_SEM_SEG_CATEGORIES",
    "get_metadata",
    "register_all_mapillary_vistas_panoptic",
    "register_mapillary_vistas_panoptic",
]

README_SECTION = "Mapillary Vistas"

# The upstream table (id, name, supercategory, isthing, color), for code that imports it from here.
MAPILLARY_VISTAS_SEM_SEG_CATEGORIES = mapillary_vistas_categories()

# name -> (image folder, panoptic PNG folder, panoptic json, semantic PNG folder), relative to the
# datasets root; all of them ship with the dataset.
_PREDEFINED_SPLITS_MAPILLARY_VISTAS_PANOPTIC = {
    "mapillary_vistas_panoptic_train": (
        "mapillary_vistas/training/images",
        "mapillary_vistas/training/panoptic",
        "mapillary_vistas/training/panoptic/panoptic_2018.json",
        "mapillary_vistas/training/labels",
    ),
    "mapillary_vistas_panoptic_val": (
        "mapillary_vistas/validation/images",
        "mapillary_vistas/validation/panoptic",
        "mapillary_vistas/validation/panoptic/panoptic_2018.json",
        "mapillary_vistas/validation/labels",
    ),
}


def get_metadata() -> dict:
    return panoptic_metadata(MAPILLARY_VISTAS_SEM_SEG_CATEGORIES, every_class_is_a_thing_class=True)


def register_mapillary_vistas_panoptic(
    name,
    metadata,
    image_root,
    panoptic_root,
    semantic_root,
    panoptic_json,
    instances_json=None,
    root=None,
):
    """`root` (default: $DETECTRON2_DATASETS) is only named in the error for missing files."""
    root = datasets_root() if root is None else root
    register_panoptic_with_sem_seg(
        name,
        root,
        README_SECTION,
        metadata,
        image_root,
        panoptic_root,
        semantic_root,
        panoptic_json,
        instances_json,
        evaluator_type="mapillary_vistas_panoptic_seg",
        # Mapillary Vistas marks unlabeled pixels with 65, not 255.
        ignore_label=65,
        integer_image_ids=False,
    )


def register_all_mapillary_vistas_panoptic(root=None):
    root = datasets_root() if root is None else root
    metadata = get_metadata()
    for name, (image_root, panoptic_root, panoptic_json, semantic_root) in (
        _PREDEFINED_SPLITS_MAPILLARY_VISTAS_PANOPTIC.items()
    ):
        register_mapillary_vistas_panoptic(
            name,
            metadata,
            os.path.join(root, image_root),
            os.path.join(root, panoptic_root),
            os.path.join(root, semantic_root),
            os.path.join(root, panoptic_json),
            root=root,
        )
