"""`MaskFormerHead`: pixel decoder + transformer decoder ("predictor")."""
import logging
from typing import Dict

from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..pixel_decoder.fpn import build_pixel_decoder, select_input_shapes
from ..transformer_decoder.maskformer_transformer_decoder import build_transformer_decoder


def move_pixel_decoder_weights(head: nn.Module, state_dict, prefix, local_metadata):
    """Upgrade, in place, a state_dict of a head of version < 2 (`head._version`), where the
    pixel decoder's modules lived directly under the head, by moving them under 'pixel_decoder.'."""
    version = local_metadata.get("version", None)
    if version is not None and version >= 2:
        return
    renamed = False
    for k in list(state_dict.keys()):
        if (
            k.startswith(prefix)
            and "sem_seg_head" in k
            and not k.startswith(prefix + "predictor")
            and not k.startswith(prefix + "pixel_decoder.")
        ):
            state_dict[k.replace(prefix, prefix + "pixel_decoder.", 1)] = state_dict.pop(k)
            renamed = True
    if renamed:
        logging.getLogger(__name__).warning(
            f"Weight format of {head.__class__.__name__} has changed: moved the pixel decoder's "
            "weights under 'pixel_decoder.'. Please upgrade your checkpoint."
        )


def require_transformer_encoder_features(transformer_encoder_features):
    """The pixel decoder's transformer-encoder output, which TRANSFORMER_IN_FEATURE
    'transformer_encoder' feeds to the predictor; an error where the decoder has no encoder."""
    if transformer_encoder_features is None:
        raise ValueError(
            "TRANSFORMER_IN_FEATURE='transformer_encoder' needs a pixel decoder with a "
            "transformer encoder (e.g. TransformerEncoderPixelDecoder)"
        )
    return transformer_encoder_features


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """
    Returns the predictor's output dict: "pred_logits" (N, Q, K+1), "pred_masks" (N, Q, H/4, W/4)
    and, with deep supervision, "aux_outputs" (a list of such dicts for the earlier predictions).

    Which pixel-decoder output feeds the predictor is chosen by MASK_FORMER.TRANSFORMER_IN_FEATURE:
    "multi_scale_pixel_decoder" (Mask2Former), "transformer_encoder", "pixel_embedding", or the
    name of a backbone feature.
    """

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
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        """
        Args:
            input_shape: shapes (channels and stride) of the input features.
            num_classes: number of classes to predict.
            pixel_decoder: the pixel decoder module.
            loss_weight, ignore_value: kept for the sem-seg head interface.
            transformer_predictor: the transformer decoder that makes the predictions.
            transformer_in_feature: which feature the predictor reads (see the class docstring).
        """
        super().__init__()
        input_shape = sorted(input_shape.items(), key=lambda x: x[1].stride)
        self.in_features = [k for k, v in input_shape]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight

        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature in ("transformer_encoder", "multi_scale_pixel_decoder"):
            predictor_in_channels = head.CONVS_DIM
        elif in_feature == "pixel_embedding":
            predictor_in_channels = head.MASK_DIM
        elif in_feature in input_shape:
            predictor_in_channels = input_shape[in_feature].channels
        else:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={in_feature!r} is neither "
                "'multi_scale_pixel_decoder', 'transformer_encoder', 'pixel_embedding' nor a backbone "
                f"feature ({sorted(input_shape)})"
            )
        return {
            "input_shape": select_input_shapes(cfg, input_shape),
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": in_feature,
            "transformer_predictor": build_transformer_decoder(
                cfg, predictor_in_channels, mask_classification=True
            ),
        }

    def forward(self, features, mask=None):
        return self.layers(features, mask)

    def layers(self, features, mask=None):
        mask_features, transformer_encoder_features, multi_scale_features = (
            self.pixel_decoder.forward_features(features)
        )
        if self.transformer_in_feature == "multi_scale_pixel_decoder":
            return self.predictor(multi_scale_features, mask_features, mask)
        if self.transformer_in_feature == "transformer_encoder":
            encoder_features = require_transformer_encoder_features(transformer_encoder_features)
            return self.predictor(encoder_features, mask_features, mask)
        if self.transformer_in_feature == "pixel_embedding":
            return self.predictor(mask_features, mask_features, mask)
        return self.predictor(features[self.transformer_in_feature], mask_features, mask)
