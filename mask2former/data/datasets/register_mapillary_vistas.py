"""Mapillary Vistas v1.2 semantic segmentation, 65 classes: mapillary_vistas_sem_seg_{train,val}."""
import os

from .catalog import datasets_root
from .categories import mapillary_vistas_categories
from .sem_seg import register_sem_seg_dataset

__all__ = ["MAPILLARY_VISTAS_SEM_SEG_CATEGORIES", "register_all_mapillary_vistas"]

README_SECTION = "Mapillary Vistas"

# The upstream semantic table, for code that imports it from here: "name" is the dataset's label
# name, "readable" the class name, "instances" whether it is a thing class, and the 66th entry is
# the unlabeled label 65, which is not evaluated.
MAPILLARY_VISTAS_SEM_SEG_CATEGORIES = [
    {
        "color": c["color"],
        "instances": bool(c["isthing"]),
        "readable": c["name"],
        "name": c["supercategory"],
        "evaluate": True,
    }
    for c in mapillary_vistas_categories()
] + [
    {
        "color": [0, 0, 0],
        "instances": False,
        "readable": "Unlabeled",
        "name": "void--unlabeled",
        "evaluate": False,
    }
]


def register_all_mapillary_vistas(root=None):
    root = datasets_root() if root is None else root
    dataset_dir = os.path.join(root, "mapillary_vistas")
    categories = [c for c in MAPILLARY_VISTAS_SEM_SEG_CATEGORIES if c["evaluate"]]
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_sem_seg_dataset(
            f"mapillary_vistas_sem_seg_{split}",
            root,
            os.path.join(dataset_dir, dirname, "images"),
            os.path.join(dataset_dir, dirname, "labels"),
            README_SECTION,
            stuff_classes=[c["readable"] for c in categories],
            stuff_colors=[c["color"] for c in categories],
            # label 65 is "void--unlabeled" in the dataset's own label PNGs.
            ignore_label=65,
        )
