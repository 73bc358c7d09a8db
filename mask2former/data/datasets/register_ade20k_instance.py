"""ADE20K instance segmentation (100 thing classes, COCO json): `ade20k_instance_{train,val}`."""
import os

from detectron2.data.datasets import load_coco_json

from .catalog import datasets_root, guarded_loader, register_dataset
from .categories import ade20k_instance_categories

__all__ = ["ADE_CATEGORIES", "get_metadata", "register_all_ade20k_instance"]

README_SECTION = "ADE20K"

# The upstream table (ADE20K-150 id and instance class name), for code that imports it from here.
ADE_CATEGORIES = [
    {"id": c["ade20k_150_id"], "name": c["name"]} for c in ade20k_instance_categories()
]

# name -> (image folder, instance json made by prepare_ade20k_ins_seg.py), relative to the root.
_PREDEFINED_SPLITS_ADE20K_INSTANCE = {
    "ade20k_instance_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/ade20k_instance_train.json",
    ),
    "ade20k_instance_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/ade20k_instance_val.json",
    ),
}


def get_metadata() -> dict:
    """The json's category ids are the ADE20K-150 ids of the 100 thing classes."""
    return {
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(ADE_CATEGORIES)},
        "thing_classes": [c["name"] for c in ADE_CATEGORIES],
    }


def register_all_ade20k_instance(root=None):
    root = datasets_root() if root is None else root
    for name, (image_root, json_file) in _PREDEFINED_SPLITS_ADE20K_INSTANCE.items():
        image_root = os.path.join(root, image_root)
        json_file = os.path.join(root, json_file)
        register_dataset(
            name,
            guarded_loader(
                name,
                root,
                [
                    (json_file, "instance json, made by datasets/prepare_ade20k_ins_seg.py"),
                    (image_root, "image folder"),
                ],
                README_SECTION,
                lambda json_file=json_file, image_root=image_root, name=name: load_coco_json(
                    json_file, image_root, name
                ),
            ),
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            **get_metadata(),
        )
