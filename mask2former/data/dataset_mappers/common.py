"""Steps shared by the dataset mappers."""
import copy
import logging

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from .color_augmentation import ColorAugSSDTransform

# Value of padded image pixels, as upstream (mid-grey before normalisation).
IMAGE_PAD_VALUE = 128
# VOID in COCO panoptic PNGs.
PANOPTIC_VOID = 0


def mask_former_augmentations(cfg, crop):
    """Resize, optional crop, optional SSD colour jitter, flip: MaskFormer's training augmentations."""
    augmentations = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        augmentations.append(crop)
    if cfg.INPUT.COLOR_AUG_SSD:
        augmentations.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augmentations.append(T.RandomFlip())
    return augmentations


def _random_flip(cfg):
    """INPUT.RANDOM_FLIP as a list of at most one augmentation ("none": no flip)."""
    if cfg.INPUT.RANDOM_FLIP == "none":
        return []
    return [
        T.RandomFlip(
            horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
            vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
        )
    ]


def large_scale_jitter_augmentations(cfg):
    """Flip, resize by a random factor of IMAGE_SIZE, then crop/pad to IMAGE_SIZE square (LSJ)."""
    augmentations = _random_flip(cfg)
    size = cfg.INPUT.IMAGE_SIZE
    augmentations += [
        T.ResizeScale(
            min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE, target_height=size, target_width=size
        ),
        T.FixedSizeCrop(crop_size=(size, size)),
    ]
    return augmentations


class RandomChoice(T.Augmentation):
    """Applies one of several augmentation sequences, picked uniformly at random per image."""

    def __init__(self, policies):
        super().__init__()
        self.policies = [T.AugmentationList(policy) for policy in policies]

    def __call__(self, aug_input):
        return self.policies[np.random.randint(len(self.policies))](aug_input)

    def __repr__(self):
        return f"RandomChoice({self.policies})"


def detr_augmentations(cfg):
    """
    DETR's training augmentation (also MMDetection's Mask2Former/ViT-Adapter recipe): flip, then with
    probability 1/2 either resize the short side to one of INPUT.MIN_SIZE_TRAIN (long side at most
    INPUT.MAX_SIZE_TRAIN), or first resize the short side to one of INPUT.CROP.PRE_CROP_MIN_SIZES, take
    a random INPUT.CROP (e.g. "absolute_range" 384-600) and then do that multi-scale resize.
    """
    augmentations = _random_flip(cfg)

    def multi_scale_resize():
        return T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )

    if not cfg.INPUT.CROP.ENABLED:
        return augmentations + [multi_scale_resize()]
    crop_policy = [
        T.ResizeShortestEdge(cfg.INPUT.CROP.PRE_CROP_MIN_SIZES, cfg.INPUT.MAX_SIZE_TRAIN, "choice"),
        T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
        multi_scale_resize(),
    ]
    return augmentations + [RandomChoice([[multi_scale_resize()], crop_policy])]


class LargeScaleJitterDatasetMapper:
    """
    What the large-scale-jitter ("new baseline") mappers share: their configuration (training
    only, :func:`large_scale_jitter_augmentations`) and the reading and augmenting of the image.
    """

    @configurable
    def __init__(self, is_train=True, *, tfm_gens, image_format):
        self.tfm_gens = tfm_gens
        self.img_format = image_format
        self.is_train = is_train
        logging.getLogger(type(self).__module__).info(
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

    def _read_and_augment(self, dataset_dict):
        """
        Returns a deep copy of `dataset_dict` with the augmented ``image`` tensor, the transforms,
        and the (H, W) of the image before and after them.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        original_shape = image.shape[:2]
        image, transforms = T.apply_transform_gens(self.tfm_gens, image)
        dataset_dict["image"] = image_to_tensor(image)
        return dataset_dict, transforms, original_shape, image.shape[:2]


def padding_to_divisible(height, width, divisibility):
    """F.pad arguments (left, right, top, bottom) that pad H and W up to multiples of `divisibility`."""
    if divisibility <= 0:
        return [0, 0, 0, 0]
    pad_h = -height % divisibility
    pad_w = -width % divisibility
    return [0, pad_w, 0, pad_h]


def pad(tensor, padding, value):
    if not any(padding):
        return tensor
    return F.pad(tensor, padding, value=value).contiguous()


def image_to_tensor(image):
    """HxWxC uint8 array -> CxHxW uint8 tensor."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_semantic_gt(file_name):
    # Transforms are not implemented for uint16 images, so the labels go through float64.
    return utils.read_image(file_name).astype("double")


def instances_from_masks(image_shape, classes, masks):
    """
    Instances with ``gt_classes`` (int64) and ``gt_masks`` (an N x H x W bool tensor, as
    MaskFormer's criterion takes them). Masks left empty by a crop are dropped, so every target
    has pixels; an image without any target gives empty (0 x H x W) tensors, not an error.
    """
    instances = Instances(image_shape)
    kept = [(c, m) for c, m in zip(classes, masks) if m.any()]
    instances.gt_classes = torch.tensor([c for c, _ in kept], dtype=torch.int64)
    if kept:
        instances.gt_masks = BitMasks(torch.stack([torch.as_tensor(m, dtype=torch.bool) for _, m in kept])).tensor
    else:
        instances.gt_masks = torch.zeros((0,) + tuple(image_shape), dtype=torch.bool)
    return instances


def annotation_masks(annotations, height, width):
    """Binary HxW masks of COCO-style annotations: polygons, RLE (compressed or not) or arrays."""
    from detectron2.structures import polygons_to_bitmask
    import pycocotools.mask as mask_util

    masks = []
    for annotation in annotations:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            mask = polygons_to_bitmask(segmentation, height, width)
        elif isinstance(segmentation, dict):
            if isinstance(segmentation["counts"], list):
                segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
            mask = mask_util.decode(segmentation)
        elif isinstance(segmentation, np.ndarray) and segmentation.ndim == 2:
            mask = segmentation
        else:
            raise ValueError(
                f"Cannot convert a segmentation of type {type(segmentation).__name__} to a mask: expected "
                "polygons (list of lists), COCO RLE (dict) or an HxW array."
            )
        if mask.shape != (height, width):
            raise ValueError(f"An instance mask is {mask.shape} (HxW) but its image is {(height, width)}.")
        masks.append(mask == 1)
    return masks


def transformed_annotations(dataset_dict, transforms, image_shape):
    """Non-crowd annotations of a record, with the geometric transforms applied."""
    annotations = []
    for annotation in dataset_dict.pop("annotations"):
        if annotation.get("iscrowd", 0):
            continue
        annotation.pop("keypoints", None)
        annotations.append(utils.transform_instance_annotations(annotation, transforms, image_shape))
    return annotations
