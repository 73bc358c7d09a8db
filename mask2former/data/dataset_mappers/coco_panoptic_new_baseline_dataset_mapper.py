import torch

from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks

from .coco_instance_new_baseline_dataset_mapper import valid_region
from .common import LargeScaleJitterDatasetMapper, detr_augmentations, instances_from_masks
from .mask_former_panoptic_dataset_mapper import panoptic_ids, panoptic_targets

__all__ = ["COCOPanopticNewBaselineDatasetMapper", "COCOPanopticDETRDatasetMapper"]


class COCOPanopticNewBaselineDatasetMapper(LargeScaleJitterDatasetMapper):
    """
    Large-scale-jitter mapper for panoptic segmentation (used by the COCO panoptic configs): the
    augmentations of :class:`COCOInstanceNewBaselineDatasetMapper`, applied to the image and its
    panoptic PNG. Returns ``image`` and, in training, ``instances`` with ``gt_classes``,
    ``gt_masks`` (N x H x W bool tensor) and ``gt_boxes``, one per non-crowd segment still in the
    crop.
    """

    def __call__(self, dataset_dict):
        dataset_dict, transforms, original_shape, image_shape = self._read_and_augment(dataset_dict)

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


class COCOPanopticDETRDatasetMapper(COCOPanopticNewBaselineDatasetMapper):
    """The same targets with DETR's augmentation (:func:`detr_augmentations`) instead of LSJ: the
    recipe of MMDetection's Mask2Former and ViT-Adapter (``INPUT.DATASET_MAPPER_NAME: coco_panoptic_detr``)."""

    @classmethod
    def from_config(cls, cfg, is_train=True):
        args = super().from_config(cfg, is_train)
        args["tfm_gens"] = detr_augmentations(cfg)
        return args
