import math
import warnings

import torch
from torch import nn
from torch.nn.init import constant_, xavier_uniform_

from ..functions.ms_deform_attn_func import ms_deform_attn

__all__ = ["MSDeformAttn"]


def _is_power_of_2(n):
    if not isinstance(n, int) or n < 0:
        raise ValueError("invalid input for _is_power_of_2: {} (type: {})".format(n, type(n)))
    return n != 0 and (n & (n - 1)) == 0


def _softmax_last_dim(x):
    """softmax(x, -1), written out: PyTorch's CPU softmax is several times slower on a last dim as
    short as n_levels * n_points (e.g. 12). Results agree with F.softmax to float rounding."""
    # Subtracting the (constant) row maximum keeps exp finite and does not change the gradient.
    e = (x - x.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), with upstream's parameter names, shapes and
    initialisation, so that published checkpoints load key for key.

    Each query attends to ``n_points`` locations per head and level, placed at learned offsets around
    its reference point, with softmax weights over the ``n_levels * n_points`` samples of a head.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError("d_model must be divisible by n_heads, but got {} and {}".format(d_model, n_heads))
        head_dim = d_model // n_heads
        if not _is_power_of_2(head_dim):
            warnings.warn(
                "MSDeformAttn: d_model / n_heads = {} is not a power of 2; the CUDA kernel is most efficient "
                "when it is.".format(head_dim)
            )
        # Upstream's value; it bounds how many images the CUDA kernel processes per launch.
        self.im2col_step = 64
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        # Offsets start as a fixed pattern: head h looks along direction 2*pi*h/n_heads (scaled so the
        # larger coordinate is 1), point i at distance i+1, the same on every level.
        constant_(self.sampling_offsets.weight.data, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, self.n_points, 1)
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1) * distances
        with torch.no_grad():
            self.sampling_offsets.bias = nn.Parameter(grid.reshape(-1))
        constant_(self.attention_weights.weight.data, 0.0)
        constant_(self.attention_weights.bias.data, 0.0)
        xavier_uniform_(self.value_proj.weight.data)
        constant_(self.value_proj.bias.data, 0.0)
        xavier_uniform_(self.output_proj.weight.data)
        constant_(self.output_proj.bias.data, 0.0)

    def _check_inputs(self, query, reference_points, input_flatten, input_padding_mask):
        if query.dim() != 3 or query.shape[2] != self.d_model:
            raise ValueError(
                "MSDeformAttn: query must be (N, Len_q, d_model={}), got shape {}".format(self.d_model, tuple(query.shape))
            )
        if input_flatten.dim() != 3 or input_flatten.shape[2] != self.d_model or input_flatten.shape[0] != query.shape[0]:
            raise ValueError(
                "MSDeformAttn: input_flatten must be (N={}, Len_in, d_model={}), got shape {}".format(
                    query.shape[0], self.d_model, tuple(input_flatten.shape)
                )
            )
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (
            query.shape[0],
            query.shape[1],
            self.n_levels,
        ):
            raise ValueError(
                "MSDeformAttn: reference_points must be (N={}, Len_q={}, n_levels={}, 2 or 4), got shape {}".format(
                    query.shape[0], query.shape[1], self.n_levels, tuple(reference_points.shape)
                )
            )
        if reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                "Last dim of reference_points must be 2 or 4, but get {} instead.".format(reference_points.shape[-1])
            )
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != tuple(input_flatten.shape[:2]):
            raise ValueError(
                "MSDeformAttn: input_padding_mask must be (N, Len_in) = {}, got shape {}".format(
                    tuple(input_flatten.shape[:2]), tuple(input_padding_mask.shape)
                )
            )

    def forward(
        self,
        query,
        reference_points,
        input_flatten,
        input_spatial_shapes,
        input_level_start_index,
        input_padding_mask=None,
    ):
        """
        Args:
            query: (N, Len_q, C)
            reference_points: (N, Len_q, n_levels, 2) normalised (x, y) in [0, 1], (0, 0) the top-left
                corner and (1, 1) the bottom-right one, padding included; or (N, Len_q, n_levels, 4)
                boxes (x, y, w, h), whose size scales the offsets.
            input_flatten: (N, sum_l H_l * W_l, C)
            input_spatial_shapes: (n_levels, 2) int64, (H_l, W_l); or a sequence of (H_l, W_l) pairs
                (what the pixel decoder passes, so that exporters can follow the sizes)
            input_level_start_index: (n_levels,) int64, where each level starts in input_flatten
            input_padding_mask: (N, sum_l H_l * W_l) bool, True at padding positions, or None
        Returns:
            (N, Len_q, C)
        """
        self._check_inputs(query, reference_points, input_flatten, input_padding_mask)
        batch, num_queries, _ = query.shape
        num_values = input_flatten.shape[1]
        head_dim = self.d_model // self.n_heads

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.n_heads, head_dim)
        sampling_offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        attention_weights = _softmax_last_dim(
            self.attention_weights(query).view(batch, num_queries, self.n_heads, self.n_levels * self.n_points)
        ).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        # The broadcasts below are laid out as (..., n_levels, n_points, 2) blocks, which PyTorch
        # computes several times faster on CPU than broadcasting size-1 dims between small ones.
        block = (self.n_levels, self.n_points, 2)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W, H) to normalise them.
            if isinstance(input_spatial_shapes, torch.Tensor):
                offset_normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
                offset_normalizer = offset_normalizer.to(sampling_offsets)
            else:
                # Stacked from the sizes one by one (not torch.tensor of a list) so that a tracer
                # records them as the feature shapes they come from, not as constants.
                offset_normalizer = torch.stack(
                    [torch.stack([torch.as_tensor(w), torch.as_tensor(h)]) for h, w in input_spatial_shapes]
                ).to(sampling_offsets)
            offset_normalizer = offset_normalizer[:, None, :].expand(block).contiguous()
            origins = reference_points[:, :, None, :, None, :].expand(batch, num_queries, 1, *block)
            sampling_locations = origins.contiguous() + sampling_offsets / offset_normalizer
        else:
            origins = reference_points[:, :, None, :, None, :2].expand(batch, num_queries, 1, *block)
            box_sizes = reference_points[:, :, None, :, None, 2:].expand(batch, num_queries, 1, *block)
            sampling_locations = origins.contiguous() + sampling_offsets / self.n_points * box_sizes.contiguous() * 0.5
        output = ms_deform_attn(
            value,
            input_spatial_shapes,
            input_level_start_index,
            sampling_locations,
            attention_weights,
            self.im2col_step,
        )
        return self.output_proj(output)
