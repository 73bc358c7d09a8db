import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks

from .common import (
    annotation_masks,
    image_to_tensor,
    instances_from_masks,
    large_scale_jitter_augmentations,
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


class COCOInstanceNewBaselineDatasetMapper:
    """
    Large-scale-jitter mapper for instance segmentation (DETR-style, used by the COCO instance
    configs): flip (``INPUT.RANDOM_FLIP``), resize by a random factor in
    [``MIN_SCALE``, ``MAX_SCALE``] of ``IMAGE_SIZE``, crop/pad to ``IMAGE_SIZE`` x ``IMAGE_SIZE``.

    Returns ``image``, ``padding_mask`` (True on padded pixels) and, in training, ``instances``
    with ``gt_classes``, ``gt_masks`` (N x H x W bool tensor) and ``gt_boxes`` (tight boxes of
    the masks); objects that the crop removes are dropped. Polygons, RLE and array masks work.
    """

    @configurable
    def __init__(self, is_train=True, *, tfm_gens, image_format):
        self.tfm_gens = tfm_gens
        self.img_format = image_format
        self.is_train = is_train
        logging.getLogger(__name__).info(
            f"[{self.__class__.__name__}] Full TransformGens used in training: {self.tfm_gens}"
        )

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if not is_train:
            raise ValueError(f"{cls.__name__} builds training augmentations only.")
        return {
            "is_train": is_train,
            "tfm_gens": large_scale_jitter_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        original_shape = image.shape[:2]
        image, transforms = T.apply_transform_gens(self.tfm_gens, image)
        image_shape = image.shape[:2]
        valid = valid_region(transforms, original_shape)
        dataset_dict["image"] = image_to_tensor(image)
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
