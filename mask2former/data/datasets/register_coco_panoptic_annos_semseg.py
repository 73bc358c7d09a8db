"""
COCO panoptic with semantic masks derived from the panoptic ones:
`coco_2017_{train,val}_panoptic_with_sem_seg`. Also narrows the thing classes of Detectron2's
builtin `coco_2017_{train,val}_panoptic` to the 80 thing classes.
"""
import os

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .catalog import datasets_root
from .panoptic_json import panoptic_metadata, register_panoptic_with_sem_seg

__all__ = [
    "get_metadata",
    "register_all_coco_panoptic_annos_sem_seg",
    "register_coco_panoptic_annos_sem_seg",
]

README_SECTION = "COCO"

# name of Detectron2's builtin panoptic dataset -> (image folder, panoptic PNG folder,
# panoptic json, semantic PNG folder made by prepare_coco_semantic_annos_from_panoptic_annos.py,
# instance json), relative to the datasets root.
_PREDEFINED_SPLITS_COCO_PANOPTIC = {
    "coco_2017_train_panoptic": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_semseg_train2017",
        "coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_semseg_val2017",
        "coco/annotations/instances_val2017.json",
    ),
}


def get_metadata() -> dict:
    """133 classes (80 things + 53 stuff) in Detectron2's COCO_CATEGORIES order."""
    return panoptic_metadata(COCO_CATEGORIES)


def register_coco_panoptic_annos_sem_seg(
    name,
    metadata,
    image_root,
    panoptic_root,
    panoptic_json,
    sem_seg_root,
    instances_json,
    root=None,
):
    """
    Register `<name>_with_sem_seg`; `name` is the builtin COCO panoptic dataset it extends.
    `root` (default: $DETECTRON2_DATASETS) is only named in the error for missing files.
    """
    root = datasets_root() if root is None else root
    builtin = MetadataCatalog.get(name)
    if hasattr(builtin, "thing_classes"):
        # Detectron2 lists all 133 classes as thing classes for its "standard" panoptic COCO; the
        # visualizer and the instance evaluator of Mask2Former expect only the 80 thing classes.
        delattr(builtin, "thing_classes")
        delattr(builtin, "thing_colors")
        builtin.set(thing_classes=metadata["thing_classes"], thing_colors=metadata["thing_colors"])

    semantic_name = name + "_with_sem_seg"
    register_panoptic_with_sem_seg(
        semantic_name,
        root,
        README_SECTION,
        metadata,
        image_root,
        panoptic_root,
        sem_seg_root,
        panoptic_json,
        instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        integer_image_ids=True,
        made_by={"sem_seg": "datasets/prepare_coco_semantic_annos_from_panoptic_annos.py"},
        sem_seg_root=sem_seg_root,
    )


def register_all_coco_panoptic_annos_sem_seg(root=None):
    root = datasets_root() if root is None else root
    for name, (image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json) in (
        _PREDEFINED_SPLITS_COCO_PANOPTIC.items()
    ):
        register_coco_panoptic_annos_sem_seg(
            name,
            get_metadata(),
            os.path.join(root, image_root),
            os.path.join(root, panoptic_root),
            os.path.join(root, panoptic_json),
            os.path.join(root, sem_seg_root),
            os.path.join(root, instances_json),
            root=root,
        )
