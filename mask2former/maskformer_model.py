"""The MaskFormer / Mask2Former meta-architecture: normalise, pad, backbone + head, then either the
training losses or the semantic / panoptic / instance post-processing, which lives in
:mod:`mask2former.modeling.postprocessing` (shared with test-time augmentation and the deployment
runner of exported models).
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone, ResNet
from detectron2.structures import BitMasks, ImageList, Instances
from torch import nn

from .modeling import postprocessing
from .modeling.backbone.fused_resnet import resnet_inference_features
from .modeling.criterion import SetCriterion
from .modeling.matcher import HungarianMatcher
from .utils.cpu_memory import keep_freed_cpu_memory
from .utils.misc import is_exporting
from .modeling.postprocessing import masks_to_boxes, resize_to_output  # noqa: F401 (re-exported)


def metadata_dataset_name(cfg) -> str:
    """
    The dataset whose metadata (class names, thing/stuff ids) the model is built with: the first
    training set, or the first test set when a config only evaluates or predicts (--eval-only,
    DefaultPredictor) and leaves DATASETS.TRAIN empty.
    """
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError(
            "MaskFormer reads its class names and thing/stuff ids from a dataset's metadata, but "
            "DATASETS.TRAIN and DATASETS.TEST are both empty: name the dataset the model was trained "
            "on (or one with the same classes) in DATASETS.TEST."
        )
    return names[0]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Main class for mask classification semantic / panoptic / instance segmentation."""

    # Subclasses with other targets (e.g. video clips) swap in their matcher and losses.
    matcher_class = HungarianMatcher
    criterion_class = SetCriterion

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Tuple[float],
        pixel_std: Tuple[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
    ):
        """
        Args:
            backbone: a :class:`Backbone` module.
            sem_seg_head: head returning ``pred_logits`` (N, Q, K+1), ``pred_masks`` (N, Q, h, w)
                and optionally ``aux_outputs``; must expose ``num_classes``.
            criterion: computes the (unweighted) losses; its ``weight_dict`` weights them.
            num_queries: number of queries Q.
            object_mask_threshold: panoptic: minimum class probability of a kept query.
            overlap_threshold: panoptic: minimum visible / full mask area of a kept segment.
            metadata: dataset metadata (thing ids for panoptic / instance inference).
            size_divisibility: pad images to a multiple of this (< 0: the backbone's).
            sem_seg_postprocess_before_inference: resize mask logits to the output size before
                inference (needed by panoptic / instance inference) instead of resizing the
                semantic result.
            pixel_mean, pixel_std: per-channel normalisation, in the model's input channel order.
            semantic_on, panoptic_on, instance_on: which outputs inference produces.
            test_topk_per_image: instance inference keeps the top-k (query, class) pairs.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.overlap_threshold = overlap_threshold
        self.object_mask_threshold = object_mask_threshold
        self.metadata = metadata
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        # Non-persistent: published checkpoints do not contain them.
        self.register_buffer("pixel_mean", torch.Tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.Tensor(pixel_std).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"MaskFormer: PIXEL_MEAN {pixel_mean} and PIXEL_STD {pixel_std} differ in length")

        self.semantic_on = semantic_on
        self.instance_on = instance_on
        self.panoptic_on = panoptic_on
        self.test_topk_per_image = test_topk_per_image
        if not self.semantic_on and not self.sem_seg_postprocess_before_inference:
            raise ValueError(
                "MaskFormer: SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE must be on when SEMANTIC_ON is off"
            )

    @classmethod
    def from_config(cls, cfg):
        # The model needs its dataset's metadata. Register the config's custom datasets for entry
        # points that do not (Detectron2's DefaultPredictor, scripts); reading their annotations
        # is enough here, the files are checked by whatever trains or evaluates on them.
        from .data.custom import register_custom_datasets

        register_custom_datasets(cfg, validate=False)
        if cfg.MODEL.DEVICE == "cpu":
            keep_freed_cpu_memory()  # page faults of fresh large tensors: see utils/cpu_memory.py
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())

        mf = cfg.MODEL.MASK_FORMER
        matcher = cls.matcher_class(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        if mf.DEEP_SUPERVISION:
            # DEC_LAYERS counts the prediction from the learnable queries, hence DEC_LAYERS - 1 aux outputs.
            base = dict(weight_dict)
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        criterion = cls.criterion_class(
            sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": mf.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mf.TEST.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(metadata_dataset_name(cfg)),
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or mf.TEST.PANOPTIC_ON or mf.TEST.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": mf.TEST.SEMANTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "panoptic_on": mf.TEST.PANOPTIC_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------------------
    # input
    def _check_image(self, image, index: int) -> torch.Tensor:
        """Validates ``batched_inputs[index]["image"]`` and returns it as a (C, H, W) tensor.

        Accepted: uint8 or floating point values in the 0-255 range, CHW, with as many channels as
        PIXEL_MEAN; a single-channel (grey) image is replicated to every channel.
        """
        where = f'batched_inputs[{index}]["image"]'
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"MaskFormer: {where} must be a torch.Tensor (C, H, W), got {type(image).__name__}")
        if image.dtype == torch.bool or image.is_complex():
            raise TypeError(f"MaskFormer: {where} has dtype {image.dtype}; expected uint8 or float in 0-255")
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise ValueError(f"MaskFormer: {where} must have shape (C, H, W), got {tuple(image.shape)}")
        num_channels = self.pixel_mean.shape[0]
        if image.shape[0] == 1 and num_channels != 1:
            image = image.expand(num_channels, -1, -1)
        if image.shape[0] != num_channels:
            hint = " (it looks like H, W, C: permute it to C, H, W)" if image.shape[-1] == num_channels else ""
            raise ValueError(
                f"MaskFormer: {where} has shape {tuple(image.shape)}: expected {num_channels} channels "
                f"(C, H, W) in INPUT.FORMAT order{hint}. Convert 4-channel (RGBA) images to "
                f"{num_channels} channels before calling the model."
            )
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"MaskFormer: {where} is empty, shape {tuple(image.shape)}")
        if not image.is_floating_point() and image.dtype != torch.uint8:
            low, high = int(image.min()), int(image.max())
            if low < 0 or high > 255:
                raise ValueError(
                    f"MaskFormer: {where} has dtype {image.dtype} with values in [{low}, {high}]; "
                    "expected 8-bit values (0-255)"
                )
        return image

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalises every image and pads the batch (with zeros, after normalisation)."""
        images = []
        for i, x in enumerate(batched_inputs):
            image = self._check_image(x["image"], i).to(self.device)
            images.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, targets: List[Instances], images: ImageList) -> List[Dict]:
        h_pad, w_pad = images.tensor.shape[-2:]
        new_targets = []
        for targets_per_image in targets:
            gt_masks = targets_per_image.gt_masks
            if isinstance(gt_masks, BitMasks):
                gt_masks = gt_masks.tensor
            padded_masks = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded_masks[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            new_targets.append({"labels": targets_per_image.gt_classes, "masks": padded_masks})
        return new_targets

    # ------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: list of dicts (DatasetMapper format): ``image`` (C, H, W) in
                INPUT.FORMAT channel order, for training ``instances`` with ``gt_classes`` and
                ``gt_masks``, for inference optionally the output ``height`` and ``width``.
        Returns:
            training: dict of weighted losses. Inference: list of dicts with ``sem_seg``
            (K, height, width) scores, ``panoptic_seg`` (id map int32, segments_info) and
            ``instances``, depending on the enabled inference types.
        """
        if not self.training:
            images, mask_cls_results, mask_pred_results = self.predict_masks(batched_inputs)
            settings = self.postprocess_settings()
            return [
                postprocessing.postprocess_image(
                    mask_cls,
                    mask_pred,
                    image_size,
                    input_per_image.get("height", image_size[0]),
                    input_per_image.get("width", image_size[1]),
                    settings,
                )
                for mask_cls, mask_pred, input_per_image, image_size in zip(
                    mask_cls_results, mask_pred_results, batched_inputs, images.image_sizes
                )
            ]

        images = self.preprocess_image(batched_inputs)
        outputs = self.sem_seg_head(self.backbone_features(images.tensor))
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.prepare_targets(gt_instances, images)
        else:
            targets = None
        losses = self.criterion(outputs, targets)
        weight_dict = self.criterion.weight_dict
        return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

    def head_outputs(self, images: torch.Tensor) -> Dict:
        """The head's outputs (``pred_logits``, ``pred_masks`` at the head's stride, ...) for a
        normalised, padded batch (N, C, H_pad, W_pad); what exported networks compute."""
        return self.sem_seg_head(self.backbone_features(images))

    def backbone_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The backbone's features of a normalised, padded batch. In inference a ResNet on the
        CPU reads the batch channels last: its oneDNN convolutions run about 1.15x faster on that
        layout, and its features, channels last too, feed the pixel decoder's convolutions and
        encoder tokens without reordering; without autograd it runs with its frozen batch norms
        folded into the convolutions (:mod:`.modeling.backbone.fused_resnet`). Training keeps the
        given layout: channels last changes the backbone's gradients by up to 3e-3 relative
        (float32 summation order, the same size as either layout's distance from a float64
        computation), which moves losses whose importance-sampled points sit at the top-k boundary
        by 1e-4 (tools/compare_outputs.py), beyond the float32 tolerance the training path is held
        to. Other backbones and devices, and export, keep the layout they were given."""
        if (
            not self.training
            and isinstance(self.backbone, ResNet)
            and images.device.type == "cpu"
            and not is_exporting()
        ):
            images = images.contiguous(memory_format=torch.channels_last)
            return resnet_inference_features(self.backbone, images)
        return self.backbone(images)

    def predict_masks(self, batched_inputs: List[Dict]):
        """Inference up to the head: (padded ImageList, class logits (N, Q, K+1), mask logits
        (N, Q, H_pad, W_pad) bilinearly upsampled to the padded input size)."""
        images = self.preprocess_image(batched_inputs)
        outputs = self.head_outputs(images.tensor)
        mask_pred_results = postprocessing.upsample_masks(outputs["pred_masks"], images.tensor.shape[-2:])
        return images, outputs["pred_logits"], mask_pred_results

    def postprocess_settings(self) -> postprocessing.PostProcessSettings:
        """The post-processing settings, read from the current attributes (tests and tools may
        change thresholds on a built model)."""
        return postprocessing.PostProcessSettings(
            num_classes=self.sem_seg_head.num_classes,
            semantic_on=self.semantic_on,
            panoptic_on=self.panoptic_on,
            instance_on=self.instance_on,
            object_mask_threshold=self.object_mask_threshold,
            overlap_threshold=self.overlap_threshold,
            topk_per_image=self.test_topk_per_image,
            sem_seg_postprocess_before_inference=self.sem_seg_postprocess_before_inference,
            thing_ids=postprocessing.thing_ids_from_metadata(self.metadata),
            dataset_name=getattr(self.metadata, "name", "?"),
        )

    def postprocess(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> Dict:
        """Enabled inference types for one image from class logits (Q, K+1) and mask logits
        (Q, H, W) already at the output size."""
        return postprocessing.postprocess_at_output_size(mask_cls, mask_pred, self.postprocess_settings())

    # ------------------------------------------------------------------------------------------
    # single inference types (used by test-time augmentation); ``mask_prob`` (= mask_pred.sigmoid())
    # may be passed to share it between them
    def semantic_inference(self, mask_cls, mask_pred, mask_prob: Optional[torch.Tensor] = None):
        return postprocessing.semantic_inference(mask_cls, mask_pred, mask_prob)

    def panoptic_inference(self, mask_cls, mask_pred, mask_prob: Optional[torch.Tensor] = None):
        return postprocessing.panoptic_inference_with(self.postprocess_settings(), mask_cls, mask_pred, mask_prob)

    def instance_inference(self, mask_cls, mask_pred, mask_prob: Optional[torch.Tensor] = None):
        return postprocessing.instance_inference_with(self.postprocess_settings(), mask_cls, mask_pred, mask_prob)
