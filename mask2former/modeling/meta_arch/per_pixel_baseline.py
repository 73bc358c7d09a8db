"""Per-pixel classification baselines of the MaskFormer paper, as Detectron2 sem-seg heads (used
with Detectron2's `SemanticSegmentor`): a 1x1 classifier on the pixel decoder's mask features, and
a variant whose per-class masks come from a transformer decoder with one query per class."""
from typing import Dict

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..pixel_decoder.fpn import build_pixel_decoder, select_input_shapes
from ..transformer_decoder.maskformer_transformer_decoder import StandardTransformerDecoder
from .mask_former_head import move_pixel_decoder_weights, require_transformer_encoder_features


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselineHead(nn.Module):
    _version = 2

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        move_pixel_decoder_weights(self, state_dict, prefix, local_metadata)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """
        Args:
            input_shape: shapes (channels and stride) of the input features.
            num_classes: number of classes to predict.
            pixel_decoder: the pixel decoder module.
            loss_weight: loss weight.
            ignore_value: category id to be ignored during training.
        """
        super().__init__()
        input_shape = sorted(input_shape.items(), key=lambda x: x[1].stride)
        self.in_features = [k for k, v in input_shape]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight

        self.pixel_decoder = pixel_decoder
        self.predictor = Conv2d(self.pixel_decoder.mask_dim, num_classes, kernel_size=1, stride=1, padding=0)
        weight_init.c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "input_shape": select_input_shapes(cfg, input_shape),
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
        }

    def forward(self, features, targets=None):
        """
        Returns:
            In training, (None, {"loss_sem_seg": ...}); in inference, (per-class logits upsampled
            by the common stride, {}).
        """
        x = self.layers(features)
        if self.training:
            return None, self.losses(x, targets)
        return self._upsample(x), {}

    def layers(self, features):
        mask_features, _, _ = self.pixel_decoder.forward_features(features)
        return self.predictor(mask_features)

    def _upsample(self, x):
        return F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)

    def losses(self, predictions, targets):
        predictions = self._upsample(predictions.float())
        loss = F.cross_entropy(predictions, targets, reduction="mean", ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselinePlusHead(PerPixelBaselineHead):
    """Per-class masks predicted by MaskFormer's transformer decoder (one query per class, no
    classification), optionally deeply supervised."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_feature: str,
        transformer_predictor: nn.Module,
        deep_supervision: bool,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """
        Args:
            transformer_in_feature: "transformer_encoder" (the pixel decoder's encoder output) or
                the name of a backbone feature.
            transformer_predictor: the transformer decoder.
            deep_supervision: add a loss on every intermediate decoder prediction.
            Others: see `PerPixelBaselineHead`.
        """
        super().__init__(
            input_shape,
            num_classes=num_classes,
            pixel_decoder=pixel_decoder,
            loss_weight=loss_weight,
            ignore_value=ignore_value,
        )
        del self.predictor
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.deep_supervision = deep_supervision

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature == "transformer_encoder":
            in_channels = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
        elif in_feature in input_shape:
            in_channels = input_shape[in_feature].channels
        else:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={in_feature!r} is neither "
                f"'transformer_encoder' nor a backbone feature ({sorted(input_shape)})"
            )
        ret["transformer_in_feature"] = in_feature
        ret["transformer_predictor"] = StandardTransformerDecoder(cfg, in_channels, mask_classification=False)
        ret["deep_supervision"] = cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION
        return ret

    def forward(self, features, targets=None):
        x, aux_outputs = self.layers(features)
        if not self.training:
            return self._upsample(x), {}
        losses = self.losses(x, targets)
        if self.deep_supervision:
            for i, aux_output in enumerate(aux_outputs):
                losses[f"loss_sem_seg_{i}"] = self.losses(aux_output["pred_masks"], targets)["loss_sem_seg"]
        return None, losses

    def layers(self, features):
        mask_features, transformer_encoder_features, _ = self.pixel_decoder.forward_features(features)
        if self.transformer_in_feature == "transformer_encoder":
            encoder_features = require_transformer_encoder_features(transformer_encoder_features)
            predictions = self.predictor(encoder_features, mask_features)
        else:
            predictions = self.predictor(features[self.transformer_in_feature], mask_features)
        if self.deep_supervision:
            return predictions["pred_masks"], predictions["aux_outputs"]
        return predictions["pred_masks"], None
