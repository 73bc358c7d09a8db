"""Mask2Former's pixel decoder: a multi-scale deformable-attention encoder over the coarser backbone
levels (res3-res5 by default) followed by FPN-style lateral/output convs down to the common stride."""
import copy
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...utils.misc import is_exporting
from ..onednn_linear import OneDNNLinear, onednn_applies, onednn_linear
from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from ..transformer_decoder.transformer import activation_fn, xavier_init_matrices
from .fpn import build_fpn_level_convs, select_input_shapes
from .ops.functions import level_sizes
from .ops.modules import MSDeformAttn

__all__ = ["MSDeformAttnTransformerEncoderOnly", "MSDeformAttnPixelDecoder"]

# Width of the deformable encoder's FFN: fixed upstream (MASK_FORMER.DIM_FEEDFORWARD is not used).
_ENCODER_DIM_FEEDFORWARD = 1024
# Sampling points per head and level: fixed upstream
# (SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS is not read).
_ENCODER_N_POINTS = 4
# Upstream always feeds three scales to the transformer decoder.
_NUM_MULTI_SCALE_LEVELS = 3


class _PlainWeightGradientConv(torch.autograd.Function):
    """``F.conv2d`` of a channels-last CPU map whose backward takes the weight gradient from plain
    (NCHW) copies of the map and of the output gradient. For a 3x3 convolution oneDNN's
    backward-weights kernel on channels-last data is the slowest step of the convolution (1.5x its
    forward); on plain data it picks a blocked kernel that is faster, the two copies included (the
    FPN output conv at stride 4, 2 x 256 x 128 x 128, with GroupNorm and ReLU, 2 threads: 6-10%
    less CPU time for forward + backward, 1.37-1.42 -> 1.28-1.29 s in two alternating runs). The
    forward and the input gradient keep the channels-last kernels; the weight gradient changes by
    float32 rounding only (another summation order: its largest distance from a float64
    computation, on random data, 4e-6 of the largest gradient against 1e-6 on channels last)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv_args = ([*stride], [*padding], [*dilation], False, [0, 0], groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, *ctx.conv_args, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad.contiguous(), x.contiguous(), weight, None, *ctx.conv_args, [False, True, False]
            )[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _fpn_output_conv(conv, x):
    """``conv(x)`` for an FPN output conv (Detectron2 Conv2d: convolution, norm, activation); when
    its weight gets a gradient from a channels-last float32 CPU map, the convolution's weight
    gradient comes from plain copies (see _PlainWeightGradientConv). Measured for 3x3 kernels
    only: 1x1 ones are faster on channels last."""
    if (
        conv.weight.requires_grad
        and torch.is_grad_enabled()
        and onednn_applies(x, conv.weight)
        and x.is_contiguous(memory_format=torch.channels_last)
        and conv.weight.shape[-2:] != (1, 1)
        and isinstance(conv.padding, tuple)
    ):
        x = _PlainWeightGradientConv.apply(
            x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        if conv.norm is not None:
            x = conv.norm(x)
        return conv.activation(x) if conv.activation is not None else x
    return conv(x)


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    def __init__(
        self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)

        self.linear1 = OneDNNLinear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = OneDNNLinear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def _dropout(self, module, x):
        # Identity at inference and at p=0 (the published recipes): skip the call and its copy.
        return module(x) if self.training and module.p > 0 else x

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self._dropout(self.dropout1, attended))
        # The FFN runs on (N * Len, C) rows, so that its linear layers return fresh tensors rather
        # than views: the ReLU and the residual sum then write into them in place (a linear
        # layer's backward does not need its output; in place on a view, autograd would copy).
        # On CPU every new activation-sized buffer costs page faults comparable to the arithmetic.
        rows = src.flatten(0, 1)
        if self.activation is F.relu:
            # oneDNN applies the ReLU in the product's own pass (see onednn_linear).
            hidden = onednn_linear(rows, self.linear1.weight, self.linear1.bias, relu=True)
        else:
            hidden = self.activation(self.linear1(rows))
        out = self._dropout(self.dropout3, self.linear2(self._dropout(self.dropout2, hidden))).add_(rows)
        return self.norm2(out).view_as(src)


class MSDeformAttnTransformerEncoder(nn.Module):
    def __init__(self, encoder_layer, num_layers):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(spatial_shapes, valid_ratios, device):
        """Where each token of the flattened levels looks from, on every level.

        A token is the centre of its pixel, (col + 0.5, row + 0.5), divided by the valid (unpadded)
        extent of its own level; it is then rescaled by each level's valid ratios, so that one
        point lands on the same image location on every level.
        Returns (N, sum_l H_l*W_l, L, 2), (x, y) order.
        """
        per_level = []
        for level, (height, width) in enumerate(level_sizes(spatial_shapes)):
            col_centres = torch.arange(width, dtype=torch.float32, device=device).add_(0.5)
            row_centres = torch.arange(height, dtype=torch.float32, device=device).add_(0.5)
            # Row-major token order: x cycles fastest.
            x = col_centres.repeat(height)[None] / (valid_ratios[:, level, 0:1] * width)
            y = row_centres.repeat_interleave(width)[None] / (valid_ratios[:, level, 1:2] * height)
            per_level.append(torch.stack((x, y), -1))
        own_level_points = torch.cat(per_level, 1)
        return own_level_points[:, :, None, :] * valid_ratios[:, None, :, :]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
        output = src
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios, device=src.device)
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return output


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable-DETR encoder over several feature levels (no padding masks: whole images)."""

    def __init__(
        self,
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        dim_feedforward=1024,
        dropout=0.1,
        activation="relu",
        num_feature_levels=4,
        enc_n_points=4,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead

        encoder_layer = MSDeformAttnTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = MSDeformAttnTransformerEncoder(encoder_layer, num_encoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self):
        xavier_init_matrices(self)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs, pos_embeds):
        """
        Args:
            srcs, pos_embeds: lists of (N, C, H_l, W_l), one per level; channels-last maps flatten
                to tokens without a copy. A position map may have batch size 1 for all images.
        Returns:
            memory (N, sum_l H_l*W_l, C), spatial_shapes (L, 2) int64, level_start_index (L,) int64.
        """
        # Every level becomes a run of H_l*W_l tokens (row-major), the runs concatenated from the
        # first level to the last; the positions get their level's learned embedding added.
        # (N, C, H, W) -> (N, H*W, C) is a view; the concatenation writes the contiguous tokens.
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        lvl_pos_embed_flatten = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[lvl] for lvl, pos in enumerate(pos_embeds)], 1
        )
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=src_flatten.device)
        tokens_per_level = spatial_shapes[:, 0] * spatial_shapes[:, 1]
        level_start_index = tokens_per_level.cumsum(0) - tokens_per_level
        # Inputs are never padded here, so every level is fully valid.
        valid_ratios = src_flatten.new_ones((src_flatten.shape[0], len(srcs), 2))

        # The layers get the sizes as a list (from the feature shapes, which exporters follow).
        memory = self.encoder(
            src_flatten, [tuple(src.shape[2:]) for src in srcs], level_start_index, valid_ratios, lvl_pos_embed_flatten
        )
        return memory, spatial_shapes, level_start_index


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm=None,
        transformer_in_features: List[str],
        common_stride: int,
    ):
        """
        Args:
            input_shape: shapes (channels and stride) of the input features.
            transformer_*: deformable encoder settings.
            conv_dim: channels of the encoder and of the FPN convs.
            mask_dim: channels of the mask features.
            norm: normalization of the FPN convs ("" for none, which adds conv biases).
            transformer_in_features: backbone features the encoder reads.
            common_stride: stride of the mask features; FPN levels are added down to it.
        """
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {missing} are not among the pixel "
                f"decoder's input features {sorted(input_shape)} (SEM_SEG_HEAD.IN_FEATURES)"
            )
        transformer_input_shape = sorted(
            ((k, v) for k, v in input_shape.items() if k in transformer_in_features),
            key=lambda x: x[1].stride,
        )
        input_shape = sorted(input_shape.items(), key=lambda x: x[1].stride)
        self.in_features = [k for k, v in input_shape]  # from high to low resolution
        self.feature_strides = [v.stride for k, v in input_shape]
        self.feature_channels = [v.channels for k, v in input_shape]

        self.transformer_in_features = [k for k, v in transformer_input_shape]
        transformer_in_channels = [v.channels for k, v in transformer_input_shape]
        self.transformer_feature_strides = [v.stride for k, v in transformer_input_shape]
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # One projection per encoder level, in the encoder's order (low to high resolution).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for in_channels in transformer_in_channels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=_ENCODER_N_POINTS,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        # The position maps of the latest input's level sizes and device: without padding masks
        # they depend on nothing else. One entry only, so that inputs of ever new sizes (evaluation
        # at original image sizes) do not accumulate maps. Not state: not in the state dict.
        self._position_cache = (None, None)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = _NUM_MULTI_SCALE_LEVELS
        self.common_stride = common_stride
        # FPN levels finer than the encoder's finest level, down to the common stride.
        stride = min(self.transformer_feature_strides)
        self.num_fpn_levels = int(np.log2(stride) - np.log2(self.common_stride))

        lateral_convs = []
        output_convs = []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral_conv, output_conv = build_fpn_level_convs(in_channels, conv_dim, norm)
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Top-down order (low to high resolution), the order forward_features visits them in.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": select_input_shapes(cfg, input_shape),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            # As upstream, the encoder shares the transformer decoder's head count and dropout.
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": _ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
        }

    def _position_maps(self, maps):
        """The sine position map of each map's size, (1, conv_dim, H, W) channels last (so that it
        flattens to tokens without a copy): the same for every image of the batch, and recomputed
        only when the sizes change."""
        if is_exporting():
            # An exported graph computes them from the input's shape.
            return [self.pe_layer(x) for x in maps]
        key = (maps[0].device, tuple(tuple(x.shape[-2:]) for x in maps))
        if self._position_cache[0] != key:
            positions = [self.pe_layer(x)[:1].contiguous(memory_format=torch.channels_last) for x in maps]
            self._position_cache = (key, positions)
        return self._position_cache[1]

    def _conv_layout(self, x):
        """On the CPU, maps enter the convolutions channels last: oneDNN's kernels run faster on it
        (and in inference the backbone's ResNet features come out that way already), and the
        encoder's tokens are then views of its level maps. Other devices keep their layout."""
        if x.device.type == "cpu" and not is_exporting():
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.autocast("cuda", enabled=False)
    def forward_features(self, features):
        """
        Returns:
            mask_features (N, mask_dim, H/common_stride, W/common_stride),
            the encoder output at the coarsest level (N, conv_dim, h, w),
            multi_scale_features: the 3 coarsest outputs, low to high resolution.
        """
        # Encoder levels from low to high resolution. Deformable attention runs in fp32.
        maps = [self._conv_layout(features[f].float()) for f in self.transformer_in_features[::-1]]
        srcs = [proj(x) for proj, x in zip(self.input_proj, maps)]

        y, spatial_shapes, level_start_index = self.transformer(srcs, self._position_maps(maps))
        bs = y.shape[0]

        sizes = [tuple(src.shape[2:]) for src in srcs]
        # Tokens back to (N, C, H, W) maps: channels-last views.
        out = [
            z.transpose(1, 2).view(bs, -1, h, w)
            for z, (h, w) in zip(torch.split(y, [h * w for h, w in sizes], dim=1), sizes)
        ]

        # Extra FPN levels, from low to high resolution.
        for idx, f in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            x = self._conv_layout(features[f].float())
            cur_fpn = self.lateral_convs[idx](x)
            y = cur_fpn + F.interpolate(
                out[-1], size=cur_fpn.shape[-2:], mode="bilinear", align_corners=False
            )
            out.append(_fpn_output_conv(self.output_convs[idx], y))

        multi_scale_features = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale_features
