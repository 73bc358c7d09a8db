"""Linear layers computed by oneDNN on the CPU.

On the CPU, ``F.linear`` goes to MKL's GEMM. For the token-heavy layers of this project (thousands
of rows: the deformable encoder's projections and FFN, Swin's MLPs and projections) oneDNN's
kernels are faster at the same product: a linear layer over M rows of K features is a 1x1
convolution over an (M x 1) image with K channels, and with the channels last in memory the rows
need no reordering. Measured on the 2-core CPU (``tools/benchmark_linear.py``, process CPU time):

- forward: oneDNN's linear primitive (``torch.ops.mkldnn._linear_pointwise``, the same kernels as
  the 1x1 convolution) runs at 1.2-1.7x the GEMM rate, with no bias broadcast copy before the
  product either (GEMM's addmm first writes the bias into every output row), and can apply a ReLU
  in the same pass (``relu=True``: 1.2x faster than the product followed by a ReLU);
- backward (``--backward-kernels``, kernels taking turns call by call): the input gradient
  grad @ weight runs 1.2-2x faster through the same linear primitive, given the transposed weight
  as a strided view, than as a GEMM. oneDNN's backward-data convolution is as fast as the linear
  primitive with 2 threads on a quiet machine, but 1.3-1.8x slower with one thread or under load.
  The weight gradient stays a GEMM: oneDNN's backward-weights convolution is as fast or up to
  1.4x slower, and the linear primitive (on a transposed copy of one operand) is within 10% of
  the GEMM with one thread or on a quiet machine (faster only when other processes load the CPU).

Results equal ``F.linear`` to float32 rounding (a different summation order, not bit-identical).
Small inputs (the transformer decoder's 100 queries), other devices and dtypes, and tracing or
export keep ``F.linear``: there GEMM is as fast or faster, and an exported graph should show a
plain matrix product.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..utils.misc import is_exporting

__all__ = ["OneDNNLinear", "onednn_linear", "onednn_applies", "matmul_nt", "MIN_ROWS"]

# Below this many rows MKL's GEMM is as fast (measured: 1024 rows already favour oneDNN).
MIN_ROWS = 1024


def _use_onednn(x: torch.Tensor) -> bool:
    return onednn_applies(x) and x.numel() >= MIN_ROWS * x.shape[-1]


def onednn_applies(*tensors: torch.Tensor) -> bool:
    """Whether the oneDNN paths may serve these operands: CPU float32, oneDNN present, no CPU
    autocast, nothing being recorded."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    # Under CPU autocast the plain product runs in the lower precision, as callers expect.
    if torch.is_autocast_enabled("cpu"):
        return False
    # Recorded graphs (jit, ONNX, torch.export / compile) keep the plain product: they should not
    # depend on a CPU-only oneDNN op.
    return not (torch.jit.is_scripting() or is_exporting())


def matmul_nt(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for 2-D x (M, K) and weight (N, K) of any strides, without autograd.

    For the products with a whole feature map on one side: mask logits (queries x pixels), their
    gradients, per-class semantic scores. With K at most a few hundred (queries, channels),
    MKL's GEMM runs them at a third of its usual rate here; oneDNN's linear primitive, given the
    map as a (transposed, strided) weight, needs no copy and runs 2-3x faster. With the pixels as
    K (the query embeddings' gradient, a few queries x 16,384 pixels x 256 channels) GEMM is
    slower still: 3.6 ms against oneDNN's 0.7 ms. Results equal ``torch.mm`` to float32 rounding.
    Small products, other devices, dtypes and recorded graphs use ``torch.mm``.
    """
    if not onednn_applies(x, weight) or max(x.shape[0], weight.shape[0], x.shape[1]) < MIN_ROWS or x.shape[1] == 0:
        return torch.mm(x, weight.t())
    return _linear_pointwise(x.contiguous(), weight, None, False)


def _input_gradient(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad @ weight, (M, N) @ (N, K) for contiguous grad: the linear primitive given the
    transposed weight as a strided view (no copy); see the module docstring for the kernel choice."""
    return _linear_pointwise(grad, weight.t(), None, False)


def _weight_gradient(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """grad.T @ rows, (N, M) @ (M, K): the weight gradient, by GEMM (see the module docstring)."""
    return grad.t().mm(rows)


def _linear_pointwise(rows, weight, bias, relu):
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "relu" if relu else "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """relu?(rows @ weight.T + bias) for (M, K) contiguous rows, by oneDNN's linear primitive (a
    fresh (M, N) tensor, that callers may add into in place without relu); the backward takes each of its
    products from the faster kernel (see the module docstring)."""

    @staticmethod
    def forward(ctx, rows, weight, bias, relu):
        out = _linear_pointwise(rows, weight, bias, relu)
        # With the ReLU fused, its gradient needs the output (where it is positive).
        ctx.save_for_backward(rows, weight, out if relu else None)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows, weight, out = ctx.saved_tensors
        grad = grad.contiguous()
        if out is not None:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        grad_rows = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_rows = _input_gradient(grad, weight)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(grad, rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_rows, grad_weight, grad_bias, None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias=None, relu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (followed by a ReLU with ``relu=True``), through oneDNN when
    that is faster (see the module docstring).

    Differentiable like ``F.linear``; the result has x's leading dimensions and is contiguous. For
    2-D x it is the fresh product itself, not a view, which callers may modify in place (except,
    under autograd, the output of ``relu=True``: the ReLU's gradient reads it).
    """
    if not _use_onednn(x):
        out = F.linear(x, weight, bias)
        return out.relu_() if relu else out
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).contiguous()
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if needs_grad:
        out = _OneDNNLinearFunction.apply(rows, weight, bias, relu)
    else:
        out = _linear_pointwise(rows, weight, bias, relu)
    # Rows in, the fresh tensor out: in place on a view of it, autograd would copy its gradient.
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out_features)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose product goes through
    :func:`onednn_linear`."""

    def forward(self, x):
        return onednn_linear(x, self.weight, self.bias)
