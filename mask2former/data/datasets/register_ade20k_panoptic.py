"""ADE20K panoptic (150 classes, 100 things): `ade20k_panoptic_{train,val}`."""
import os

from .catalog import datasets_root
from .categories import ade20k_150_categories
from .panoptic_json import panoptic_metadata, register_panoptic_with_sem_seg

__all__ = [
    "ADE20K_150_CATEGORIES",
    "ADE20k_COLORS",
    "get_metadata",
    "register_ade20k_panoptic",
    "register_all_ade20k_panoptic",
]

README_SECTION = "ADE20K"

# Module-level tables under the upstream names, for code that imports them from here.
ADE20K_150_CATEGORIES = ade20k_150_categories()
ADE20k_COLORS = [c["color"] for c in ADE20K_150_CATEGORIES]

# name -> (image folder, panoptic PNG folder, panoptic json, semantic PNG folder, instance json),
# relative to the datasets root; the panoptic and instance files are made by
# prepare_ade20k_pan_seg.py / prepare_ade20k_ins_seg.py, the semantic PNGs by
# prepare_ade20k_sem_seg.py.
_PREDEFINED_SPLITS_ADE20K_PANOPTIC = {
    "ade20k_panoptic_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/ade20k_panoptic_train",
        "ADEChallengeData2016/ade20k_panoptic_train.json",
        "ADEChallengeData2016/annotations_detectron2/training",
        "ADEChallengeData2016/ade20k_instance_train.json",
    ),
    "ade20k_panoptic_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/ade20k_panoptic_val",
        "ADEChallengeData2016/ade20k_panoptic_val.json",
        "ADEChallengeData2016/annotations_detectron2/validation",
        "ADEChallengeData2016/ade20k_instance_val.json",
    ),
}


def get_metadata() -> dict:
    return panoptic_metadata(ADE20K_150_CATEGORIES)


def register_ade20k_panoptic(
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
        evaluator_type="ade20k_panoptic_seg",
        ignore_label=255,
        integer_image_ids=False,
        made_by={
            "json": "datasets/prepare_ade20k_pan_seg.py",
            "panoptic": "datasets/prepare_ade20k_pan_seg.py",
            "sem_seg": "datasets/prepare_ade20k_sem_seg.py",
        },
    )


def register_all_ade20k_panoptic(root=None):
    root = datasets_root() if root is None else root
    metadata = get_metadata()
    for name, (image_root, panoptic_root, panoptic_json, semantic_root, instances_json) in (
        _PREDEFINED_SPLITS_ADE20K_PANOPTIC.items()
    ):
        register_ade20k_panoptic(
            name,
            metadata,
            os.path.join(root, image_root),
            os.path.join(root, panoptic_root),
            os.path.join(root, semantic_root),
            os.path.join(root, panoptic_json),
            os.path.join(root, instances_json),
            root=root,
        )
