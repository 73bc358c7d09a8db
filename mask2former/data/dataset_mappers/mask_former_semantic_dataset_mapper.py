import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .common import (
    IMAGE_PAD_VALUE,
    image_to_tensor,
    instances_from_masks,
    mask_former_augmentations,
    pad,
    padding_to_divisible,
    read_semantic_gt,
)

__all__ = ["MaskFormerSemanticDatasetMapper"]


class MaskFormerSemanticDatasetMapper:
    """
    Maps a semantic-segmentation dataset dict to MaskFormer's training input (training only).

    1. reads the image (``file_name``) and its label map (``sem_seg_file_name``);
    2. resizes, crops (retrying up to 10 windows until no category covers more than
       ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``), optionally jitters colours, flips;
    3. pads image (with 128) and labels (with the ignore label) to a multiple of
       ``INPUT.SIZE_DIVISIBILITY`` (upstream pads to exactly that size, which is the same thing
       when the crop size equals it, as in every upstream config);
    4. returns ``image`` (CxHxW uint8), ``sem_seg`` (HxW int64) and ``instances`` with one
       binary mask per class present (``gt_classes``, ``gt_masks``).
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ignore_label, size_divisibility):
        """
        Args:
            is_train: must be True (evaluation reads images with Detectron2's DatasetMapper).
            augmentations: list of augmentations or deterministic transforms.
            image_format: a format of :func:`detection_utils.read_image`, e.g. "RGB".
            ignore_label: label of pixels without a class (and of padding).
            size_divisibility: pad to a multiple of this (<= 0: no padding).
        """
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(f"[{self.__class__.__name__}] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        crop = T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE,
            cfg.INPUT.CROP.SIZE,
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        )
        # The ignore label is a property of the training data.
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        return {
            "is_train": is_train,
            "augmentations": mask_former_augmentations(cfg, crop),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": meta.ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def _check_training(self):
        if not self.is_train:
            raise ValueError(f"{self.__class__.__name__} is for training only; evaluate with DatasetMapper.")

    def _read_image(self, dataset_dict, label_key, task):
        """
        Checks the record of a `task` ("semantic" or "panoptic") segmentation dataset, whose
        labels are in `label_key`; returns a deep copy of it and its image.
        """
        self._check_training()
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        if label_key not in dataset_dict:
            raise ValueError(
                f"Cannot find '{label_key}' for {task} segmentation dataset {dataset_dict['file_name']}."
            )
        if "annotations" in dataset_dict:
            raise ValueError(f"{task.capitalize()} segmentation dataset should not have 'annotations'.")
        return dataset_dict, image

    def _augment(self, image, sem_seg_gt):
        """Returns the augmented image and label map (None stays None) and the transforms."""
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = T.apply_transform_gens(self.tfm_gens, aug_input)[1]
        return aug_input.image, aug_input.sem_seg, transforms

    def _pad_image_and_sem_seg(self, dataset_dict, image, sem_seg_gt):
        """
        Stores ``image`` and, unless `sem_seg_gt` is None, ``sem_seg`` in `dataset_dict`, padded
        to a multiple of the size divisibility; returns the padding.
        """
        padding = padding_to_divisible(image.shape[0], image.shape[1], self.size_divisibility)
        dataset_dict["image"] = pad(image_to_tensor(image), padding, IMAGE_PAD_VALUE)
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = pad(torch.as_tensor(sem_seg_gt.astype("long")), padding, self.ignore_label)
        return padding

    def __call__(self, dataset_dict):
        dataset_dict, image = self._read_image(dataset_dict, "sem_seg_file_name", "semantic")
        sem_seg_gt = read_semantic_gt(dataset_dict.pop("sem_seg_file_name"))
        if sem_seg_gt.shape != image.shape[:2]:
            raise ValueError(
                f"Label map of {dataset_dict['file_name']} is {sem_seg_gt.shape} (HxW), "
                f"its image is {image.shape[:2]}."
            )

        image, sem_seg_gt, _ = self._augment(image, sem_seg_gt)
        self._pad_image_and_sem_seg(dataset_dict, image, sem_seg_gt)
        labels = dataset_dict["sem_seg"].numpy()
        classes = [c for c in np.unique(labels) if c != self.ignore_label]
        dataset_dict["instances"] = instances_from_masks(labels.shape, classes, [labels == c for c in classes])
        return dataset_dict
