import math
import warnings

import torch
from torch import nn
from torch.nn.init import xavier_uniform_

from ....onednn_linear import OneDNNLinear, onednn_linear
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

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, ratio=1.0):
        """
        Args:
            ratio: width of the sampled values relative to ``d_model`` (ViT-Adapter samples values of
                ``int(d_model * ratio)`` channels and projects them back to ``d_model``); 1.0, the
                default, is Deformable DETR's and Mask2Former's module, parameter for parameter.
        """
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim <= 0 or value_dim % n_heads != 0:
            raise ValueError(
                "MSDeformAttn: the value width int(d_model * ratio) = int({} * {}) = {} must be positive and "
                "divisible by n_heads = {}".format(d_model, ratio, value_dim, n_heads)
            )
        head_dim = value_dim // n_heads
        if not _is_power_of_2(head_dim):
            warnings.warn(
                "MSDeformAttn: the per-head value width {} is not a power of 2; the CUDA kernel is most "
                "efficient when it is.".format(head_dim)
            )
        # Upstream's value; it bounds how many images the CUDA kernel processes per launch.
        self.im2col_step = 64
        self.d_model = d_model
        self.value_dim = value_dim
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.ratio = ratio

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = OneDNNLinear(d_model, value_dim)
        self.output_proj = OneDNNLinear(value_dim, d_model)
        self._reset_parameters()

    def _initial_offsets(self):
        """The (n_heads, n_levels, n_points, 2) starting offsets, in pixels of each level.

        Heads fan out evenly around the reference point: head h points along the angle 2*pi*h/n_heads,
        its direction vector stretched until its longer component is +-1 (so the first point of every
        head lands on one of the 8 neighbouring pixels), and its k-th point (k = 1..n_points) lies k
        such steps away. All levels start alike.
        """
        angle = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        step = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        step = step / step.abs().amax(dim=1, keepdim=True)
        distance = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        offsets = step[:, None, None, :] * distance[None, None, :, None]
        return offsets.expand(self.n_heads, self.n_levels, self.n_points, 2)

    def _reset_parameters(self):
        # Offsets: no dependence on the query at first (zero weight); the bias holds the fixed fan of
        # points above. Attention: zero logits, i.e. every sample of a head weighs the same. The value
        # and output projections are Xavier-uniform with zero bias. The two Xavier draws are the only
        # random numbers taken, value_proj's first, so a seeded build gives the same weights as
        # Deformable DETR's module.
        with torch.no_grad():
            self.sampling_offsets.weight.zero_()
            self.sampling_offsets.bias.copy_(self._initial_offsets().reshape(-1))
            self.attention_weights.weight.zero_()
            self.attention_weights.bias.zero_()
            for projection in (self.value_proj, self.output_proj):
                xavier_uniform_(projection.weight)
                projection.bias.zero_()

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
        head_dim = self.value_dim // self.n_heads

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.n_heads, head_dim)
        # The offsets and the attention logits both read the query: one matrix product (weights
        # stacked on the fly; the parameters keep upstream's two layers) reads it once.
        num_offsets = self.sampling_offsets.out_features
        query_terms = onednn_linear(
            query,
            torch.cat((self.sampling_offsets.weight, self.attention_weights.weight)),
            torch.cat((self.sampling_offsets.bias, self.attention_weights.bias)),
        )
        sampling_offsets = query_terms[..., :num_offsets].unflatten(
            -1, (self.n_heads, self.n_levels, self.n_points, 2)
        )
        attention_weights = _softmax_last_dim(
            query_terms[..., num_offsets:].unflatten(-1, (self.n_heads, self.n_levels * self.n_points))
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
