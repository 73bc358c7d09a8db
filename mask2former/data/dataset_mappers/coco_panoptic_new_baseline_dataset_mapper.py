import copy
import logging

import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks

from .coco_instance_new_baseline_dataset_mapper import valid_region
from .common import image_to_tensor, instances_from_masks, large_scale_jitter_augmentations
from .mask_former_panoptic_dataset_mapper import panoptic_ids, panoptic_targets

__all__ = ["COCOPanopticNewBaselineDatasetMapper"]


class COCOPanopticNewBaselineDatasetMapper:
    """
    Large-scale-jitter mapper for panoptic segmentation (used by the COCO panoptic configs): the
    augmentations of :class:`COCOInstanceNewBaselineDatasetMapper`, applied to the image and its
    panoptic PNG. Returns ``image`` and, in training, ``instances`` with ``gt_classes``,
    ``gt_masks`` (N x H x W bool tensor) and ``gt_boxes``, one per non-crowd segment still in the
    crop.
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
        dataset_dict["image"] = image_to_tensor(image)

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "pan_seg_file_name" in dataset_dict:
            pan_seg_gt = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")
            if pan_seg_gt.shape[:2] != original_shape:
                raise ValueError(
                    f"Panoptic PNG of {dataset_dict['file_name']} is {pan_seg_gt.shape[:2]} (HxW), "
                    f"its image is {original_shape}."
                )
            ids = panoptic_ids(transforms.apply_segmentation(pan_seg_gt))
            # Padding must not be taken for a segment, whatever value the padding used.
            ids[~torch.as_tensor(valid_region(transforms, original_shape))] = 0
            classes, masks = panoptic_targets(ids, dataset_dict["segments_info"])
            instances = instances_from_masks(image_shape, classes, masks)
            instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
            dataset_dict["instances"] = instances
        return dataset_dict
