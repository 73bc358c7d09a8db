"""Linear layers computed by oneDNN on the CPU.

On the CPU, ``F.linear`` goes to MKL's GEMM. For the token-heavy layers of this project (thousands
of rows: the deformable encoder's projections and FFN, Swin's MLPs and projections) oneDNN's
convolution kernels are faster at the same product: a linear layer over M rows of K features is a
1x1 convolution over an (M x 1) image with K channels, and with the channels last in memory the
rows need no reordering. Side by side on the 2-core CPU (``tools/benchmark_linear.py``) that
runs at 1.2-1.5x the GEMM rate for forward, 1.1-1.2x forward + backward, with results equal to
float32 rounding (a different summation order, not bit-identical).

Small inputs (the transformer decoder's 100 queries), other devices and dtypes, and tracing or
export keep ``F.linear``: there GEMM is as fast or faster, and an exported graph should show a
plain matrix product.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OneDNNLinear", "onednn_linear", "MIN_ROWS"]

# Below this many rows MKL's GEMM is as fast (measured: 1024 rows already favour oneDNN).
MIN_ROWS = 1024


def _use_onednn(x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return x.numel() >= MIN_ROWS * x.shape[-1]


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN when that is faster (see the module docstring).

    Differentiable like ``F.linear``; the result has x's leading dimensions and is contiguous.
    """
    if not _use_onednn(x):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    lead = x.shape[:-1]
    rows = x.reshape(1, -1, 1, in_features)
    # (1, K, M, 1) with channel stride 1: the channels-last layout oneDNN reads without a reorder.
    image = rows.permute(0, 3, 1, 2)
    out = F.conv2d(image, weight.view(out_features, in_features, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*lead, out_features)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose product goes through
    :func:`onednn_linear`."""

    def forward(self, x):
        return onednn_linear(x, self.weight, self.bias)
