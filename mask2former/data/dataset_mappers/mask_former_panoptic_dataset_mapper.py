import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils

from .common import PANOPTIC_VOID, instances_from_masks, pad, read_semantic_gt
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = ["MaskFormerPanopticDatasetMapper", "panoptic_ids", "panoptic_targets"]


def panoptic_ids(pan_seg_rgb):
    """Segment ids (HxW int64 tensor) of a COCO panoptic PNG: id = R + 256 G + 256^2 B."""
    rgb = torch.as_tensor(pan_seg_rgb.astype("int64"))
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def panoptic_targets(ids, segments_info):
    """(classes, masks) of the non-crowd segments, given the segment id map."""
    crowd_free = [s for s in segments_info if not s.get("iscrowd", 0)]
    return [s["category_id"] for s in crowd_free], [ids == s["id"] for s in crowd_free]


class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """
    Maps a panoptic dataset dict (``pan_seg_file_name`` + ``segments_info``, optionally
    ``sem_seg_file_name``) to MaskFormer's training input: the augmentations and padding of
    :class:`MaskFormerSemanticDatasetMapper` (the panoptic PNG is padded with VOID), and
    ``instances`` with one mask per non-crowd segment. Segments that the crop removes are dropped
    (upstream keeps them as empty masks).
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ignore_label, size_divisibility):
        super().__init__(
            is_train,
            augmentations=augmentations,
            image_format=image_format,
            ignore_label=ignore_label,
            size_divisibility=size_divisibility,
        )

    def __call__(self, dataset_dict):
        dataset_dict, image = self._read_image(dataset_dict, "pan_seg_file_name", "panoptic")
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = read_semantic_gt(dataset_dict.pop("sem_seg_file_name"))
        pan_seg_gt = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")
        if pan_seg_gt.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"Panoptic PNG of {dataset_dict['file_name']} is {pan_seg_gt.shape[:2]} (HxW), "
                f"its image is {image.shape[:2]}."
            )

        image, sem_seg_gt, transforms = self._augment(image, sem_seg_gt)
        ids = panoptic_ids(transforms.apply_segmentation(pan_seg_gt))
        padding = self._pad_image_and_sem_seg(dataset_dict, image, sem_seg_gt)
        ids = pad(ids, padding, PANOPTIC_VOID)
        classes, masks = panoptic_targets(ids, dataset_dict["segments_info"])
        dataset_dict["instances"] = instances_from_masks(tuple(ids.shape), classes, masks)
        return dataset_dict
