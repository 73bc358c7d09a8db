"""FPN-style pixel decoders of MaskFormer and `build_pixel_decoder`.

Pixel decoders are registered in Detectron2's SEM_SEG_HEADS_REGISTRY (as upstream does) and must
implement `forward_features(features) -> (mask_features, transformer_encoder_features,
multi_scale_features)`, where `multi_scale_features` lists up to three maps from low to high
resolution.
"""
import logging
from typing import Dict

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from ..transformer_decoder.transformer import build_detr_encoder, xavier_init_matrices

__all__ = [
    "build_pixel_decoder",
    "select_input_shapes",
    "build_fpn_output_conv",
    "build_fpn_level_convs",
    "BasePixelDecoder",
    "TransformerEncoderPixelDecoder",
]


def select_input_shapes(cfg, input_shape: Dict[str, ShapeSpec]) -> Dict[str, ShapeSpec]:
    """The shapes of MODEL.SEM_SEG_HEAD.IN_FEATURES; all of them must be backbone outputs (a
    missing one would silently change the decoder's structure)."""
    in_features = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES {list(in_features)} names {missing}, which the backbone "
            f"does not output (it outputs {sorted(input_shape)})"
        )
    return {k: v for k, v in input_shape.items() if k in in_features}


def build_pixel_decoder(cfg, input_shape):
    """Build the pixel decoder named by `cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME`."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} has no forward_features method: only "
            "modules that implement forward_features (returning the mask features) can be pixel decoders."
        )
    return model


# Upstream always feeds three scales to the transformer decoder.
_NUM_MULTI_SCALE_LEVELS = 3


def _fpn_output_conv(in_channels: int, conv_dim: int, norm: str) -> Conv2d:
    # Convs without a normalization get a bias instead.
    return Conv2d(
        in_channels,
        conv_dim,
        kernel_size=3,
        stride=1,
        padding=1,
        bias=norm == "",
        norm=get_norm(norm, conv_dim),
        activation=F.relu,
    )


def build_fpn_output_conv(in_channels: int, conv_dim: int, norm: str) -> Conv2d:
    """The 3x3 conv + norm + ReLU of an FPN level, Caffe2-Xavier initialised."""
    output_conv = _fpn_output_conv(in_channels, conv_dim, norm)
    weight_init.c2_xavier_fill(output_conv)
    return output_conv


def build_fpn_level_convs(in_channels: int, conv_dim: int, norm: str):
    """The (lateral 1x1 conv + norm, output 3x3 conv + norm + ReLU) pair of an FPN level that adds
    a backbone feature of `in_channels` channels to the upsampled coarser level."""
    lateral_conv = Conv2d(
        in_channels, conv_dim, kernel_size=1, bias=norm == "", norm=get_norm(norm, conv_dim)
    )
    output_conv = _fpn_output_conv(conv_dim, conv_dim, norm)
    # Both convs are built before either is filled: the same random-number order as upstream, so
    # a seeded model starts from the same weights.
    weight_init.c2_xavier_fill(lateral_conv)
    weight_init.c2_xavier_fill(output_conv)
    return lateral_conv, output_conv


@SEM_SEG_HEADS_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """Top-down FPN over the backbone features; mask features from a 3x3 conv of the finest level."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, conv_dim: int, mask_dim: int, norm=None):
        """
        Args:
            input_shape: shapes (channels and stride) of the input features.
            conv_dim: number of output channels of the intermediate conv layers.
            mask_dim: number of output channels of the final conv layer.
            norm: normalization of all conv layers ("" for none, which adds conv biases).
        """
        super().__init__()
        input_shape = sorted(input_shape.items(), key=lambda x: x[1].stride)
        self.in_features = [k for k, v in input_shape]  # from high to low resolution
        feature_channels = [v.channels for k, v in input_shape]

        lateral_convs = []
        output_convs = []
        for idx, in_channels in enumerate(feature_channels):
            if idx == len(self.in_features) - 1:
                # The coarsest level has no lateral connection: its output conv reads it directly.
                output_conv = build_fpn_output_conv(in_channels, conv_dim, norm)
                self.add_module(f"layer_{idx + 1}", output_conv)
                lateral_convs.append(None)
                output_convs.append(output_conv)
            else:
                lateral_conv, output_conv = build_fpn_level_convs(in_channels, conv_dim, norm)
                self.add_module(f"adapter_{idx + 1}", lateral_conv)
                self.add_module(f"layer_{idx + 1}", output_conv)
                lateral_convs.append(lateral_conv)
                output_convs.append(output_conv)
        # Top-down order (low to high resolution), the order forward_features visits them in.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, stride=1, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = _NUM_MULTI_SCALE_LEVELS

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": select_input_shapes(cfg, input_shape),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

    def _top_down(self, features, coarsest):
        """
        The FPN pass from the coarsest level to the finest. `coarsest` (the coarsest backbone map,
        or what replaces it) goes through the first output conv; every finer level adds its 1x1
        lateral projection to the nearest-neighbour upsampling of the level above and smooths the
        sum with its own output conv. Returns the finest map and the first
        `maskformer_num_feature_levels` maps, coarse to fine.
        """
        current = self.output_convs[0](coarsest)
        pyramid = [current]
        finer_levels = zip(self.in_features[-2::-1], self.lateral_convs[1:], self.output_convs[1:])
        for name, lateral, smooth in finer_levels:
            skip = lateral(features[name])
            current = smooth(skip + F.interpolate(current, size=skip.shape[-2:], mode="nearest"))
            pyramid.append(current)
        return current, pyramid[: self.maskformer_num_feature_levels]

    def forward_features(self, features):
        finest, pyramid = self._top_down(features, features[self.in_features[-1]])
        return self.mask_features(finest), None, pyramid

    def forward(self, features, targets=None):
        logging.getLogger(__name__).warning(
            "Calling forward() of a pixel decoder may cause unpredicted behavior; use forward_features()."
        )
        return self.forward_features(features)


class TransformerEncoderOnly(nn.Module):
    """DETR's transformer encoder over one feature map, (N, C, H, W) -> (N, C, H, W)."""

    def __init__(
        self,
        d_model=512,
        nhead=8,
        num_encoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        activation="relu",
        normalize_before=False,
    ):
        super().__init__()
        self.encoder = build_detr_encoder(
            d_model, nhead, num_encoder_layers, dim_feedforward, dropout, activation, normalize_before
        )
        xavier_init_matrices(self)
        self.d_model = d_model
        self.nhead = nhead

    def forward(self, src, mask, pos_embed):
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        if mask is not None:
            mask = mask.flatten(1)
        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        return memory.permute(1, 2, 0).view(bs, c, h, w)


@SEM_SEG_HEADS_REGISTRY.register()
class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """`BasePixelDecoder` whose coarsest level first goes through a transformer encoder."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_pre_norm: bool,
        conv_dim: int,
        mask_dim: int,
        norm=None,
    ):
        super().__init__(input_shape, conv_dim=conv_dim, mask_dim=mask_dim, norm=norm)
        input_shape = sorted(input_shape.items(), key=lambda x: x[1].stride)
        in_channels = input_shape[-1][1].channels

        self.input_proj = Conv2d(in_channels, conv_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.input_proj)
        self.transformer = TransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            normalize_before=transformer_pre_norm,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        # The coarsest output conv now reads the encoder output (conv_dim channels). It is
        # re-registered last, which fixes its place in the official checkpoints' key order.
        output_conv = build_fpn_output_conv(conv_dim, conv_dim, norm)
        name = f"layer_{len(self.in_features)}"
        delattr(self, name)
        self.add_module(name, output_conv)
        self.output_convs[0] = output_conv

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        mf = cfg.MODEL.MASK_FORMER
        ret["transformer_dropout"] = mf.DROPOUT
        ret["transformer_nheads"] = mf.NHEADS
        ret["transformer_dim_feedforward"] = mf.DIM_FEEDFORWARD
        ret["transformer_enc_layers"] = cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS
        ret["transformer_pre_norm"] = mf.PRE_NORM
        return ret

    def forward_features(self, features):
        coarsest = features[self.in_features[-1]]
        encoded = self.transformer(self.input_proj(coarsest), None, self.pe_layer(coarsest))
        finest, pyramid = self._top_down(features, encoded)
        return self.mask_features(finest), encoded, pyramid
