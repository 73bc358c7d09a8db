import copy
import logging

import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .common import (
    IMAGE_PAD_VALUE,
    annotation_masks,
    image_to_tensor,
    instances_from_masks,
    mask_former_augmentations,
    pad,
    padding_to_divisible,
    transformed_annotations,
)

__all__ = ["MaskFormerInstanceDatasetMapper"]


class MaskFormerInstanceDatasetMapper:
    """
    Maps an instance-segmentation dataset dict (COCO-style ``annotations`` with polygon, RLE or
    array masks) to MaskFormer's training input (training only): resize, optional random crop
    (``INPUT.CROP``), optional SSD colour jitter, flip; pads the image (128) and masks (0) to a
    multiple of ``INPUT.SIZE_DIVISIBILITY``; ``instances`` has one mask per non-crowd object.
    Objects that the crop removes are dropped (upstream keeps them as empty masks).
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, size_divisibility):
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.size_divisibility = size_divisibility
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(f"[{self.__class__.__name__}] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        crop = T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
        return {
            "is_train": is_train,
            "augmentations": mask_former_augmentations(cfg, crop),
            "image_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict):
        if not self.is_train:
            raise ValueError(f"{self.__class__.__name__} is for training only; evaluate with DatasetMapper.")
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        if "annotations" not in dataset_dict:
            raise ValueError(f"Instance segmentation record {dataset_dict['file_name']} has no 'annotations'.")

        aug_input = T.AugInput(image)
        transforms = T.apply_transform_gens(self.tfm_gens, aug_input)[1]
        image = aug_input.image
        annotations = transformed_annotations(dataset_dict, transforms, image.shape[:2])
        masks = annotation_masks(annotations, *image.shape[:2])
        classes = [int(a["category_id"]) for a in annotations]

        padding = padding_to_divisible(image.shape[0], image.shape[1], self.size_divisibility)
        image = pad(image_to_tensor(image), padding, IMAGE_PAD_VALUE)
        masks = [pad(torch.as_tensor(m, dtype=torch.uint8), padding, 0) for m in masks]
        dataset_dict["image"] = image
        dataset_dict["instances"] = instances_from_masks(tuple(image.shape[-2:]), classes, masks)
        return dataset_dict
