"""Training dataset mappers, chosen by ``INPUT.DATASET_MAPPER_NAME``."""
from .coco_instance_new_baseline_dataset_mapper import COCOInstanceNewBaselineDatasetMapper
from .coco_panoptic_new_baseline_dataset_mapper import (
    COCOPanopticDETRDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
)
from .color_augmentation import ColorAugSSDTransform
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = [
    "DATASET_MAPPERS",
    "build_train_mapper",
    "ColorAugSSDTransform",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticDETRDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
]

# INPUT.DATASET_MAPPER_NAME -> mapper class (the names of upstream's train_net.py).
DATASET_MAPPERS = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_instance_lsj": COCOInstanceNewBaselineDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticNewBaselineDatasetMapper,
    "coco_panoptic_detr": COCOPanopticDETRDatasetMapper,
}


def build_train_mapper(cfg):
    """The training mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME is {name!r}, which is not a dataset mapper; "
            f"choose one of {sorted(DATASET_MAPPERS)}."
        )
    return DATASET_MAPPERS[name](cfg, True)
