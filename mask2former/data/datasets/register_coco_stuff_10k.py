"""COCO-Stuff-10k semantic segmentation (171 classes): coco_2017_{train,test}_stuff_10k_sem_seg."""
import os

from .catalog import datasets_root
from .categories import coco_stuff_categories
from .sem_seg import register_sem_seg_dataset

__all__ = ["COCO_CATEGORIES", "register_all_coco_stuff_10k"]

README_SECTION = "COCO-Stuff-10k"

# The 171 COCO-Stuff classes under the upstream name, for code that imports them from here.
COCO_CATEGORIES = coco_stuff_categories()


def register_all_coco_stuff_10k(root=None):
    root = datasets_root() if root is None else root
    dataset_dir = os.path.join(root, "coco", "coco_stuff_10k")
    categories = COCO_CATEGORIES
    for split in ["train", "test"]:
        register_sem_seg_dataset(
            f"coco_2017_{split}_stuff_10k_sem_seg",
            root,
            os.path.join(dataset_dir, "images_detectron2", split),
            os.path.join(dataset_dir, "annotations_detectron2", split),
            README_SECTION,
            stuff_classes=[c["name"] for c in categories],
            stuff_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
            ignore_label=255,
        )
