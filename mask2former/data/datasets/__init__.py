"""
Builtin datasets of Mask2Former, registered under the upstream names when `mask2former` is
imported, rooted at $DETECTRON2_DATASETS (default ./datasets; layouts in datasets/README.md).
Registering reads nothing from disk; a dataset whose files are missing fails when it is loaded,
with a DatasetLayoutError naming the missing paths.
"""
from . import (
    builtin_detectron2,
    register_ade20k_full,
    register_ade20k_instance,
    register_ade20k_panoptic,
    register_coco_panoptic_annos_semseg,
    register_coco_stuff_10k,
    register_mapillary_vistas,
    register_mapillary_vistas_panoptic,
)
from .catalog import DatasetLayoutError, datasets_root

__all__ = ["DatasetLayoutError", "datasets_root", "register_all_mask2former_datasets"]


def register_all_mask2former_datasets(root=None):
    """
    (Re-)register Mask2Former's own datasets under `root` (default: $DETECTRON2_DATASETS).
    Detectron2's builtin datasets keep the root they were registered with when detectron2.data
    was imported.
    """
    register_ade20k_full.register_all_ade20k_full(root)
    register_ade20k_panoptic.register_all_ade20k_panoptic(root)
    register_ade20k_instance.register_all_ade20k_instance(root)
    register_coco_panoptic_annos_semseg.register_all_coco_panoptic_annos_sem_seg(root)
    register_coco_stuff_10k.register_all_coco_stuff_10k(root)
    register_mapillary_vistas.register_all_mapillary_vistas(root)
    register_mapillary_vistas_panoptic.register_all_mapillary_vistas_panoptic(root)


builtin_detectron2.guard_builtin_detectron2_datasets()
register_all_mask2former_datasets()
