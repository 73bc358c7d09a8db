"""Registration of semantic-segmentation datasets stored as an image folder plus a label folder."""
from detectron2.data.datasets import load_sem_seg

from .catalog import guarded_loader, register_dataset

__all__ = ["register_sem_seg_dataset"]


def register_sem_seg_dataset(
    name, root, image_dir, gt_dir, readme_section, gt_ext="png", image_ext="jpg", **metadata
):
    """
    Register `name` as Detectron2's `load_sem_seg(gt_dir, image_dir)`, preceded by a check that
    both folders exist; `metadata` gets image_root, sem_seg_root and evaluator_type "sem_seg".
    """
    register_dataset(
        name,
        guarded_loader(
            name,
            root,
            [(image_dir, "image folder"), (gt_dir, f"label folder (*.{gt_ext})")],
            readme_section,
            lambda: load_sem_seg(gt_dir, image_dir, gt_ext=gt_ext, image_ext=image_ext),
        ),
        image_root=image_dir,
        sem_seg_root=gt_dir,
        evaluator_type="sem_seg",
        **metadata,
    )
