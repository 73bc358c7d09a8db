"""OneDNNLinear / onednn_linear against F.linear (an independent computation: MKL's GEMM)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mask2former.modeling.onednn_linear import MIN_ROWS, OneDNNLinear, matmul_nt, onednn_linear


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
    real_linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(a[0].shape) or real_linear(*a, **k))
    w = torch.randn(8, 16)
    onednn_linear(torch.randn(MIN_ROWS, 16), w)
    onednn_linear(torch.randn(MIN_ROWS, 16, requires_grad=True), w)
    assert calls == []
    onednn_linear(torch.randn(MIN_ROWS - 1, 16), w)
    onednn_linear(torch.randn(MIN_ROWS, 16, dtype=torch.float64), w.double())
    assert len(calls) == 2


@pytest.mark.parametrize("grad_mode", ["no_grad", "autograd"])
@pytest.mark.parametrize("shape", [(MIN_ROWS + 5, 64), (3, 5, 64)])
def test_relu_matches_f_linear_then_relu(grad_mode, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    w = torch.randn(96, 64, requires_grad=grad_mode == "autograd")
    b = torch.randn(96)
    ref = F.linear(x, w.detach(), b).relu()
    with torch.set_grad_enabled(grad_mode == "autograd"):
        out = onednn_linear(x, w, b, relu=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    if grad_mode == "autograd":
        grad = torch.randn_like(out)
        (got,) = torch.autograd.grad(out, w, grad)
        w2 = w.detach().clone().requires_grad_()
        (want,) = torch.autograd.grad(F.linear(x, w2, b).relu(), w2, grad)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_gradients_of_a_non_contiguous_input_and_of_the_weight_only():
    torch.manual_seed(0)
    base = torch.randn(MIN_ROWS, 2, 32, requires_grad=True)
    x = base[:, 1]  # every other row of 32: reshaping copies
    w = torch.randn(16, 32, requires_grad=True)
    b = torch.randn(16)  # no gradient asked for the bias
    grad = torch.randn(MIN_ROWS, 16)
    got = torch.autograd.grad(onednn_linear(x, w, b), (base, w), grad)
    ref_grad_w = grad.t() @ x.detach()
    ref_grad_x = torch.zeros_like(base)
    ref_grad_x[:, 1] = grad @ w.detach()
    torch.testing.assert_close(got[0], ref_grad_x, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got[1], ref_grad_w, rtol=1e-4, atol=1e-3)


def test_module_keeps_nn_linear_parameters_and_state_dict():
    torch.manual_seed(0)
    plain = nn.Linear(32, 16)
    fast = OneDNNLinear(32, 16)
    fast.load_state_dict(plain.state_dict())
    assert isinstance(fast, nn.Linear) and list(fast.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, MIN_ROWS // 2, 32)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def test_rows_in_give_a_fresh_tensor_that_may_be_modified_in_place():
    torch.manual_seed(0)
    x = torch.randn(MIN_ROWS, 32, requires_grad=True)
    w = torch.randn(16, 32, requires_grad=True)
    out = onednn_linear(x, w)
    assert out._base is None
    residual = torch.randn(MIN_ROWS, 16)
    grad = torch.randn(MIN_ROWS, 16)
    got = torch.autograd.grad(out.add_(residual).relu_(), (x, w), grad)
    masked = grad * (F.linear(x.detach(), w.detach()) + residual > 0)
    torch.testing.assert_close(got[0], masked @ w.detach(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got[1], masked.t() @ x.detach(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("weight_transposed", [False, True])
def test_matmul_nt_matches_mm_for_strided_feature_maps(weight_transposed):
    """x @ weight.T with a whole feature map as the weight, contiguous or a transposed view (the
    layouts the mask products and semantic scores pass), and with no inner dimension at all."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 12, generator=g)
    weight = torch.randn(12, 5000, generator=g).t() if weight_transposed else torch.randn(5000, 12, generator=g)
    torch.testing.assert_close(matmul_nt(x, weight), x @ weight.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matmul_nt(weight, x), weight @ x.t(), rtol=1e-5, atol=1e-5)
    assert torch.equal(matmul_nt(torch.zeros(5000, 0), torch.zeros(7, 0)), torch.zeros(5000, 7))
    # The pixels as the inner dimension (few queries' gradient x a channels-last map).
    grads, pixels = torch.randn(6, 5000, generator=g), torch.randn(5000, 40, generator=g)
    expected = (grads.double() @ pixels.double()).float()
    torch.testing.assert_close(matmul_nt(grads, pixels.t()), expected, rtol=1e-5, atol=1e-4)
