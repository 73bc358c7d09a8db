"""Small helpers shared across the package (criterion, meta-architecture, fast CPU paths)."""
from typing import List, Optional

import torch
import torch.distributed as dist


def is_exporting() -> bool:
    """True while a tracer or exporter (torch.jit.trace, ONNX export, torch.export / torch.compile)
    records the model. Fast paths that only exist on this machine (compiled kernels, oneDNN ops,
    caches, value checks that read tensors) step aside then, so that the recorded graph holds
    the plain formulation."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


class NestedTensor:
    """A batch of tensors padded to a common size, with the padding marked in ``mask`` (True = pad)."""

    def __init__(self, tensors: torch.Tensor, mask: Optional[torch.Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device):
        mask = self.mask.to(device) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device), mask)

    def decompose(self):
        return self.tensors, self.mask

    def __repr__(self):
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={self.mask is not None})"


def nested_tensor_from_tensor_list(tensor_list: List[torch.Tensor]) -> NestedTensor:
    """Stacks 3-D tensors (C, H, W) of different sizes, zero-padding them at the bottom/right.

    Used to batch per-image target masks (num_masks, H, W); images may have different numbers of
    masks, so dimension 0 is padded as well.
    """
    if len(tensor_list) == 0:
        raise ValueError("nested_tensor_from_tensor_list needs at least one tensor")
    if any(t.ndim != 3 for t in tensor_list):
        shapes = [tuple(t.shape) for t in tensor_list]
        raise ValueError(f"nested_tensor_from_tensor_list expects 3-D tensors, got shapes {shapes}")
    max_size = [max(t.shape[d] for t in tensor_list) for d in range(3)]
    batch_shape = [len(tensor_list)] + max_size
    first = tensor_list[0]
    tensors = torch.zeros(batch_shape, dtype=first.dtype, device=first.device)
    mask = torch.ones((len(tensor_list), max_size[1], max_size[2]), dtype=torch.bool, device=first.device)
    for t, padded, m in zip(tensor_list, tensors, mask):
        padded[: t.shape[0], : t.shape[1], : t.shape[2]].copy_(t)
        m[: t.shape[1], : t.shape[2]] = False
    return NestedTensor(tensors, mask)
