"""Multi-scale deformable attention: the autograd function over the compiled kernels, the
pure-PyTorch reference (``grid_sample``) and :func:`ms_deform_attn`, which picks between them.

Shapes (upstream Deformable DETR conventions):
    value                    (N, S, M, D)        S = sum of H_l * W_l, M heads of D channels
    value_spatial_shapes     (L, 2) int64        (H_l, W_l) per level
    value_level_start_index  (L,) int64          offset of each level in S
    sampling_locations       (N, Lq, M, L, P, 2) normalised (x, y); 0 and 1 are the outer edges of the map
    attention_weights        (N, Lq, M, L, P)
    output                   (N, Lq, M * D)
Sampling is bilinear with zeros outside the map (``grid_sample`` with ``align_corners=False``).
"""
import contextlib

import torch
import torch.nn.functional as F
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .....utils.misc import is_exporting
from .. import backend

__all__ = [
    "MSDeformAttnFunction",
    "level_sizes",
    "ms_deform_attn",
    "ms_deform_attn_core_pytorch",
    "validate_ms_deform_attn_inputs",
]

_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def _shape(t):
    return tuple(t.shape)


def validate_ms_deform_attn_inputs(
    value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step=None
):
    """Raise ValueError naming the tensor and shapes when the inputs do not fit together.

    ``value_level_start_index`` and ``im2col_step`` may be None (the PyTorch path needs neither).
    """
    named = [
        ("value", value),
        ("value_spatial_shapes", value_spatial_shapes),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ]
    if value_level_start_index is not None:
        named.append(("value_level_start_index", value_level_start_index))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError("ms_deform_attn: {} must be a torch.Tensor, got {}".format(name, type(t).__name__))

    if value.dim() != 4:
        raise ValueError("ms_deform_attn: value must be (N, S, M, D), got shape {}".format(_shape(value)))
    batch, num_values, heads, _ = value.shape
    if value_spatial_shapes.dim() != 2 or value_spatial_shapes.shape[1] != 2:
        raise ValueError(
            "ms_deform_attn: value_spatial_shapes must be (L, 2) holding (H, W) per level, got shape {}".format(
                _shape(value_spatial_shapes)
            )
        )
    levels = value_spatial_shapes.shape[0]
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got shape {}".format(
                _shape(sampling_locations)
            )
        )
    num_queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    expected_locations = (batch, num_queries, heads, levels, points, 2)
    if _shape(sampling_locations) != expected_locations:
        raise ValueError(
            "ms_deform_attn: sampling_locations has shape {} but value {} and value_spatial_shapes {} need "
            "(N={}, Lq, M={}, L={}, P, 2)".format(
                _shape(sampling_locations), _shape(value), _shape(value_spatial_shapes), batch, heads, levels
            )
        )
    if _shape(attention_weights) != expected_locations[:-1]:
        raise ValueError(
            "ms_deform_attn: attention_weights has shape {} but value {} and sampling_locations {} need "
            "(N, Lq, M, L, P) = {}".format(
                _shape(attention_weights), _shape(value), _shape(sampling_locations), expected_locations[:-1]
            )
        )
    for name, t in (("value", value), ("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if not t.is_floating_point():
            raise ValueError("ms_deform_attn: {} must be a floating-point tensor, got {}".format(name, t.dtype))
    if not (value.dtype == sampling_locations.dtype == attention_weights.dtype):
        raise ValueError(
            "ms_deform_attn: value ({}), sampling_locations ({}) and attention_weights ({}) must have the same "
            "dtype".format(value.dtype, sampling_locations.dtype, attention_weights.dtype)
        )
    if not (value.device == sampling_locations.device == attention_weights.device):
        raise ValueError(
            "ms_deform_attn: value ({}), sampling_locations ({}) and attention_weights ({}) must be on the same "
            "device".format(value.device, sampling_locations.device, attention_weights.device)
        )
    if value_spatial_shapes.is_floating_point() or value_spatial_shapes.is_complex():
        raise ValueError(
            "ms_deform_attn: value_spatial_shapes must be an integer tensor, got {}".format(value_spatial_shapes.dtype)
        )

    sizes = value_spatial_shapes.detach().to("cpu", torch.int64)
    if levels == 0 or bool((sizes <= 0).any()):
        raise ValueError(
            "ms_deform_attn: value_spatial_shapes must hold at least one level of positive sizes, got {}".format(
                sizes.tolist()
            )
        )
    areas = sizes[:, 0] * sizes[:, 1]
    if int(areas.sum()) != num_values:
        raise ValueError(
            "ms_deform_attn: value has {} positions along dim 1 (shape {}) but value_spatial_shapes {} sum to "
            "{}".format(num_values, _shape(value), sizes.tolist(), int(areas.sum()))
        )
    if value_level_start_index is not None:
        if value_level_start_index.is_floating_point() or _shape(value_level_start_index) != (levels,):
            raise ValueError(
                "ms_deform_attn: value_level_start_index must be an integer tensor of shape (L,) = ({},), got "
                "{} {}".format(levels, value_level_start_index.dtype, _shape(value_level_start_index))
            )
        expected_starts = torch.cumsum(areas, 0) - areas
        starts = value_level_start_index.detach().to("cpu", torch.int64)
        if not torch.equal(starts, expected_starts):
            raise ValueError(
                "ms_deform_attn: value_level_start_index is {} but value_spatial_shapes {} need {}".format(
                    starts.tolist(), sizes.tolist(), expected_starts.tolist()
                )
            )
    if im2col_step is not None and (isinstance(im2col_step, bool) or not isinstance(im2col_step, int) or im2col_step <= 0):
        raise ValueError("ms_deform_attn: im2col_step must be a positive int, got {!r}".format(im2col_step))


def level_sizes(value_spatial_shapes):
    """(H_l, W_l) per level from an (L, 2) tensor or a sequence of pairs. Callers that record the
    model for export pass the sequence: its sizes come from feature shapes, which a tracer
    follows, while reading a tensor's values would freeze them (or fail, under torch.export)."""
    if isinstance(value_spatial_shapes, torch.Tensor):
        return [(int(h), int(w)) for h, w in value_spatial_shapes.tolist()]
    return [(h, w) for h, w in value_spatial_shapes]


def _core_pytorch(value, sizes, sampling_locations, attention_weights):
    batch, _, heads, channels = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled_per_level = []
    for level, (height, width) in enumerate(sizes):
        # (N, H*W, M, D) -> (N*M, D, H, W): one image per (batch, head)
        level_value = value_per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, channels, height, width)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled_per_level.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    sampled = torch.stack(sampled_per_level, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, levels * points)
    output = (sampled * weights).sum(-1).view(batch, heads * channels, num_queries)
    return output.transpose(1, 2).contiguous()


def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    """Pure-PyTorch multi-scale deformable attention (any device, any floating dtype, autograd)."""
    value_spatial_shapes = _as_shape_tensor(value_spatial_shapes, value.device)
    validate_ms_deform_attn_inputs(value, value_spatial_shapes, None, sampling_locations, attention_weights)
    return _core_pytorch(value, level_sizes(value_spatial_shapes), sampling_locations, attention_weights)


def _as_shape_tensor(value_spatial_shapes, device):
    if isinstance(value_spatial_shapes, torch.Tensor):
        return value_spatial_shapes
    return torch.as_tensor([[int(h), int(w)] for h, w in value_spatial_shapes], dtype=torch.int64, device=device)


class MSDeformAttnFunction(Function):
    """Autograd function over the compiled kernels (CUDA kernel for CUDA tensors, CPU kernel for CPU
    tensors, float32/float64). Raises a clear error when no kernel is built for the inputs' device;
    :func:`ms_deform_attn` falls back to the PyTorch path instead."""

    @staticmethod
    def forward(
        ctx, value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step
    ):
        validate_ms_deform_attn_inputs(
            value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step
        )
        kernels = backend.kernels_for(value.device)
        if torch.is_autocast_enabled(value.device.type):
            # The kernels compute in float32 at least, whatever autocast chose for the inputs.
            value, sampling_locations, attention_weights = (
                t.float() for t in (value, sampling_locations, attention_weights)
            )
        value_spatial_shapes = value_spatial_shapes.to(value.device, torch.int64).contiguous()
        value_level_start_index = value_level_start_index.to(value.device, torch.int64).contiguous()
        value, sampling_locations, attention_weights = (
            t.contiguous() for t in (value, sampling_locations, attention_weights)
        )
        output = kernels.ms_deform_attn_forward(
            value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step
        )
        ctx.save_for_backward(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights)
        ctx.im2col_step = im2col_step
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        kernels = backend.kernels_for(value.device)
        grad_value, grad_sampling_locations, grad_attention_weights = kernels.ms_deform_attn_backward(
            value,
            value_spatial_shapes,
            value_level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
            ctx.im2col_step,
        )
        return grad_value, None, None, grad_sampling_locations, grad_attention_weights, None


def ms_deform_attn(
    value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step=64
):
    """Multi-scale deformable attention through the backend chosen for the inputs' device (see
    ``ops/backend.py``). Always computes in float32 or float64: under autocast the inputs are cast to
    float32 and the output stays float32; float16/bfloat16 inputs outside autocast are computed in
    float32 and the output is cast back to value's dtype.

    ``value_spatial_shapes`` may also be a sequence of (H_l, W_l). While the model is recorded for
    export (:func:`is_exporting`), the grid_sample formulation runs whatever the backend, unchecked.
    """
    if is_exporting():
        return _core_pytorch(value, level_sizes(value_spatial_shapes), sampling_locations, attention_weights)
    value_spatial_shapes = _as_shape_tensor(value_spatial_shapes, value.device)
    for name, t in (("value", value), ("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("ms_deform_attn: {} must be a torch.Tensor, got {}".format(name, type(t).__name__))
    device_type = value.device.type
    output_dtype = None
    autocast_context = contextlib.nullcontext()
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        autocast_context = torch.autocast(device_type, enabled=False)
        value, sampling_locations, attention_weights = (
            t.float() if t.is_floating_point() else t for t in (value, sampling_locations, attention_weights)
        )
    elif any(t.dtype in _REDUCED_PRECISION for t in (value, sampling_locations, attention_weights)):
        output_dtype = value.dtype
        value, sampling_locations, attention_weights = (
            t.float() if t.is_floating_point() else t for t in (value, sampling_locations, attention_weights)
        )
    if isinstance(im2col_step, bool) or not isinstance(im2col_step, int) or im2col_step <= 0:
        raise ValueError("ms_deform_attn: im2col_step must be a positive int, got {!r}".format(im2col_step))

    with autocast_context:
        if backend.select_backend(value.device) == "pytorch":
            validate_ms_deform_attn_inputs(
                value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights
            )
            output = _core_pytorch(value, level_sizes(value_spatial_shapes), sampling_locations, attention_weights)
        else:
            output = MSDeformAttnFunction.apply(
                value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step
            )
    return output if output_dtype is None else output.to(output_dtype)
