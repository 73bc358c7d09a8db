"""ADE20K-full semantic segmentation (847 classes): `ade20k_full_sem_seg_{train,val}`."""
import os

from .catalog import datasets_root
from .categories import ade20k_full_categories
from .sem_seg import register_sem_seg_dataset

__all__ = ["ADE20K_SEM_SEG_FULL_CATEGORIES", "register_all_ade20k_full"]

README_SECTION = "ADE20K-full"

# The upstream table (name, ADE20K object id, trainId = label), for code that imports it from here.
ADE20K_SEM_SEG_FULL_CATEGORIES = [
    dict(c, trainId=train_id) for train_id, c in enumerate(ade20k_full_categories())
]


def register_all_ade20k_full(root=None):
    root = datasets_root() if root is None else root
    dataset_dir = os.path.join(root, "ADE20K_2021_17_01")
    stuff_classes = [c["name"] for c in ade20k_full_categories()]
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_sem_seg_dataset(
            f"ade20k_full_sem_seg_{split}",
            root,
            os.path.join(dataset_dir, "images_detectron2", dirname),
            os.path.join(dataset_dir, "annotations_detectron2", dirname),
            README_SECTION,
            gt_ext="tif",
            stuff_classes=stuff_classes,
            # 847 classes do not fit in 8 bits: labels are 16-bit TIFFs whose ignore value is 65535.
            ignore_label=65535,
        )
