"""Mapillary Vistas v1.2 semantic segmentation, 65 classes: mapillary_vistas_sem_seg_{train,val}."""
import os

from .catalog import datasets_root
from .categories import mapillary_vistas_categories
from .sem_seg import register_sem_seg_dataset

__all__ = ["register_all_mapillary_vistas"]

README_SECTION = "Mapillary Vistas"


def register_all_mapillary_vistas(root=None):
    root = datasets_root() if root is None else root
    dataset_dir = os.path.join(root, "mapillary_vistas")
    categories = mapillary_vistas_categories()
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_sem_seg_dataset(
            f"mapillary_vistas_sem_seg_{split}",
            root,
            os.path.join(dataset_dir, dirname, "images"),
            os.path.join(dataset_dir, dirname, "labels"),
            README_SECTION,
            stuff_classes=[c["name"] for c in categories],
            stuff_colors=[c["color"] for c in categories],
            # label 65 is "void--unlabeled" in the dataset's own label PNGs.
            ignore_label=65,
        )
