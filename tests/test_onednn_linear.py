"""OneDNNLinear / onednn_linear against F.linear (an independent computation: MKL's GEMM)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mask2former.modeling.onednn_linear import MIN_ROWS, OneDNNLinear, onednn_linear


@pytest.mark.parametrize("shape", [(2, 700, 96), (MIN_ROWS + 3, 256), (3, 5, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_f_linear_forward_and_backward(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(48, shape[-1], requires_grad=True)
    b = torch.randn(48, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], 48)

    out = onednn_linear(x, w, b)
    assert out.shape == (*shape[:-1], 48) and out.is_contiguous()
    ref = F.linear(x.detach(), w.detach(), None if b is None else b.detach())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)

    grads = torch.autograd.grad(out, [x, w] + ([b] if bias else []), grad)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_() if bias else None
    ref_grads = torch.autograd.grad(F.linear(x2, w2, b2), [x2, w2] + ([b2] if bias else []), grad)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_large_inputs_take_the_onednn_path_and_small_ones_f_linear(monkeypatch):
    calls = []
    real_conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(1) or real_conv2d(*a, **k))
    w = torch.randn(8, 16)
    onednn_linear(torch.randn(MIN_ROWS, 16), w)
    assert calls == [1]
    onednn_linear(torch.randn(MIN_ROWS - 1, 16), w)
    onednn_linear(torch.randn(MIN_ROWS, 16, dtype=torch.float64), w.double())
    assert calls == [1]


def test_module_keeps_nn_linear_parameters_and_state_dict():
    torch.manual_seed(0)
    plain = nn.Linear(32, 16)
    fast = OneDNNLinear(32, 16)
    fast.load_state_dict(plain.state_dict())
    assert isinstance(fast, nn.Linear) and list(fast.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, MIN_ROWS // 2, 32)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
