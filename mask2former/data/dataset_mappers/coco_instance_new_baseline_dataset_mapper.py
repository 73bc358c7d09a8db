import numpy as np
import torch

from detectron2.structures import BitMasks

from .common import (
    LargeScaleJitterDatasetMapper,
    annotation_masks,
    instances_from_masks,
    transformed_annotations,
)

__all__ = ["COCOInstanceNewBaselineDatasetMapper", "valid_region"]


def valid_region(transforms, image_shape):
    """
    Pixels of the transformed image that come from the original image (not padding).

    A map of ones goes through the transforms: padding fills with 0 (fvcore) or 255 (newer
    Detectron2's FixedSizeCrop), never 1.
    """
    return transforms.apply_segmentation(np.ones(image_shape, dtype=np.uint8)) == 1


class COCOInstanceNewBaselineDatasetMapper(LargeScaleJitterDatasetMapper):
    """
    Large-scale-jitter mapper for instance segmentation (DETR-style, used by the COCO instance
    configs): flip (``INPUT.RANDOM_FLIP``), resize by a random factor in
    [``MIN_SCALE``, ``MAX_SCALE``] of ``IMAGE_SIZE``, crop/pad to ``IMAGE_SIZE`` x ``IMAGE_SIZE``.

    Returns ``image``, ``padding_mask`` (True on padded pixels) and, in training, ``instances``
    with ``gt_classes``, ``gt_masks`` (N x H x W bool tensor) and ``gt_boxes`` (tight boxes of
    the masks); objects that the crop removes are dropped. Polygons, RLE and array masks work.
    """

    def __call__(self, dataset_dict):
        dataset_dict, transforms, original_shape, image_shape = self._read_and_augment(dataset_dict)
        valid = valid_region(transforms, original_shape)
        dataset_dict["padding_mask"] = torch.as_tensor(np.ascontiguousarray(~valid))

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            annotations = transformed_annotations(dataset_dict, transforms, image_shape)
            masks = [m & valid for m in annotation_masks(annotations, *image_shape)]
            classes = [int(a["category_id"]) for a in annotations]
            instances = instances_from_masks(image_shape, classes, masks)
            instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
            dataset_dict["instances"] = instances
        return dataset_dict
