"""Neighborhood attention against a naive per-position computation written from the rules.

The reference walks every query with Python loops, builds its window from the NATTEN rules (group
g = i % D, place p = i // D, start clamp(p - K//2, 0, Lg - K), neighbour (s + j) * D + g, bias index
(s + j) - p + K - 1) and computes softmax(q . k + rpb) v one query at a time.
"""
import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.backbone import neighborhood_attention as na
from mask2former.modeling.backbone.neighborhood_attention import (
    NeighborhoodAttention2D,
    natten_with_rpb,
    neighborhood_attention_2d,
)


def _axis_window(i, length, kernel_size, dilation):
    group, place = i % dilation, i // dilation
    group_length = -(-(length - group) // dilation)
    start = min(max(place - kernel_size // 2, 0), group_length - kernel_size)
    return [((start + j) * dilation + group, start + j - place + kernel_size - 1) for j in range(kernel_size)]


def _neighbours(y, x, H, W, kernel_size, dilation):
    return [
        (r, c, br, bc)
        for r, br in _axis_window(y, H, kernel_size, dilation)
        for c, bc in _axis_window(x, W, kernel_size, dilation)
    ]


def naive_attention(q, k, v, rpb, kernel_size, dilation):
    B, heads, H, W, d = q.shape
    rows = []
    for y in range(H):
        row = []
        for x in range(W):
            neighbours = _neighbours(y, x, H, W, kernel_size, dilation)
            logits = torch.stack(
                [(q[:, :, y, x] * k[:, :, r, c]).sum(-1) + rpb[:, br, bc] for r, c, br, bc in neighbours], dim=-1
            )
            weights = logits.softmax(dim=-1)
            row.append(sum(weights[..., n, None] * v[:, :, r, c] for n, (r, c, _, _) in enumerate(neighbours)))
        rows.append(torch.stack(row, dim=2))
    return torch.stack(rows, dim=2)


CASES = [
    # (H, W, kernel, dilation): odd, non-square, dilation not dividing the size, kernels 3/5/7
    (7, 9, 3, 1),
    (9, 7, 3, 2),
    (11, 13, 5, 2),
    (10, 16, 3, 3),
    (23, 17, 5, 3),
    (7, 8, 7, 1),
    (15, 22, 7, 2),
]


def _inputs(H, W, kernel_size, heads=2, head_dim=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, H, W, head_dim, generator=generator, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, generator=generator, dtype=torch.float64)
    return q, k, v, rpb


@pytest.mark.parametrize("H,W,kernel_size,dilation", CASES)
def test_forward_matches_naive(H, W, kernel_size, dilation):
    q, k, v, rpb = _inputs(H, W, kernel_size)
    expected = naive_attention(q, k, v, rpb, kernel_size, dilation)
    for implementation in ("gather", "tiled"):
        out = neighborhood_attention_2d(q, k, v, rpb, kernel_size, dilation, implementation=implementation)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12, msg=implementation)


@pytest.mark.parametrize("H,W,kernel_size,dilation", [(9, 7, 3, 2), (11, 10, 5, 2), (7, 7, 7, 1)])
def test_backward_matches_naive(H, W, kernel_size, dilation):
    inputs = [t.requires_grad_() for t in _inputs(H, W, kernel_size, seed=1)]
    grad_out = torch.randn(2, 2, H, W, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = torch.autograd.grad(naive_attention(*inputs, kernel_size, dilation), inputs, grad_out)
    for implementation in ("gather", "tiled"):
        out = neighborhood_attention_2d(*inputs, kernel_size, dilation, implementation=implementation)
        grads = torch.autograd.grad(out, inputs, grad_out)
        for name, got, want in zip(["query", "key", "value", "rpb"], grads, expected):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=f"{implementation}: gradient of {name}")


def test_tiled_path_in_chunks_matches_gather(monkeypatch):
    # A tiny chunk budget forces one row of tiles per chunk.
    monkeypatch.setattr(na, "_TILED_CHUNK_ELEMENTS", 1)
    q, k, v, rpb = _inputs(29, 31, 5, seed=3)
    tiled = neighborhood_attention_2d(q, k, v, rpb, 5, 3, implementation="tiled")
    gather = neighborhood_attention_2d(q, k, v, rpb, 5, 3, implementation="gather")
    torch.testing.assert_close(tiled, gather, rtol=1e-10, atol=1e-12)


def test_auto_picks_by_size(monkeypatch):
    calls = []
    monkeypatch.setattr(na, "_gather_attention", lambda *a: calls.append("gather") or a[0])
    monkeypatch.setattr(na, "_tiled_attention", lambda *a: calls.append("tiled") or a[0])
    small = torch.zeros(1, 2, 12, 12, 8)
    large = torch.zeros(1, 6, 64, 64, 32)
    neighborhood_attention_2d(small, small, small, None, 11, 1)
    neighborhood_attention_2d(large, large, large, None, 11, 1)
    assert calls == ["gather", "tiled"]


def test_no_rpb_is_zero_bias():
    q, k, v, _ = _inputs(9, 10, 3)
    out = neighborhood_attention_2d(q, k, v, None, 3, 2)
    torch.testing.assert_close(out, naive_attention(q, k, v, torch.zeros(2, 5, 5, dtype=torch.float64), 3, 2))


def test_rejects_small_maps_and_bad_shapes():
    q, k, v, rpb = _inputs(8, 12, 5)
    with pytest.raises(ValueError, match=r"height \(8\) is smaller than kernel_size \* dilation = 5 \* 2"):
        neighborhood_attention_2d(q, k, v, rpb, 5, 2)
    with pytest.raises(ValueError, match="rpb must have shape"):
        neighborhood_attention_2d(q, k, v, rpb[:, :3], 5, 1)
    with pytest.raises(ValueError, match="odd kernel size"):
        neighborhood_attention_2d(q, k, v, None, 4, 1)
    with pytest.raises(ValueError, match="one shape"):
        neighborhood_attention_2d(q, k[..., :2], v, rpb, 5, 1)
    with pytest.raises(ValueError, match="Unknown neighborhood attention implementation"):
        neighborhood_attention_2d(q, k, v, rpb, 5, 1, implementation="cuda")


def _module_reference(module, x):
    """Zero-pad right/bottom to K*D, then qkv -> naive attention -> proj, crop (NATTEN <= 0.15)."""
    B, H, W, C = x.shape
    window = module.kernel_size * module.dilation
    padded = F.pad(x, (0, 0, 0, max(0, window - W), 0, max(0, window - H)))
    Hp, Wp = padded.shape[1:3]
    heads, head_dim = module.num_heads, C // module.num_heads
    qkv = (padded @ module.qkv.weight.T + module.qkv.bias).view(B, Hp, Wp, 3, heads, head_dim)
    q, k, v = (qkv[:, :, :, i].permute(0, 3, 1, 2, 4) for i in range(3))
    out = naive_attention(q * head_dim ** -0.5, k, v, module.rpb, module.kernel_size, module.dilation)
    out = out.permute(0, 2, 3, 1, 4).reshape(B, Hp, Wp, C)[:, :H, :W]
    return out @ module.proj.weight.T + module.proj.bias


@pytest.mark.parametrize("size,kernel_size,dilation", [((5, 9), 3, 2), ((4, 3), 3, 1), ((12, 7), 5, 2)])
def test_module_pads_small_maps_like_natten(size, kernel_size, dilation):
    torch.manual_seed(0)
    module = NeighborhoodAttention2D(8, 2, kernel_size, dilation).double()
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    torch.testing.assert_close(module(x), _module_reference(module, x), rtol=1e-10, atol=1e-12)


def test_module_parameters_match_checkpoint_layout():
    module = NeighborhoodAttention2D(192, 6, 11, 14)
    assert [(n, tuple(p.shape)) for n, p in module.named_parameters()] == [
        ("rpb", (6, 21, 21)),
        ("qkv.weight", (576, 192)),
        ("qkv.bias", (576,)),
        ("proj.weight", (192, 192)),
        ("proj.bias", (192,)),
    ]


@pytest.mark.skipif(natten_with_rpb() is None, reason="no natten with rpb (< 0.20) installed")
@pytest.mark.parametrize("H,W,kernel_size,dilation", [(14, 17, 3, 2), (23, 20, 5, 3), (33, 33, 11, 3)])
def test_natten_matches_pytorch(H, W, kernel_size, dilation):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = [t.to(device).requires_grad_() for t in _inputs(H, W, kernel_size, heads=3, head_dim=8)]
    out_natten = neighborhood_attention_2d(*inputs, kernel_size, dilation, implementation="natten")
    out_torch = neighborhood_attention_2d(*inputs, kernel_size, dilation, implementation="tiled")
    torch.testing.assert_close(out_natten, out_torch, rtol=1e-7, atol=1e-9)
    grad_out = torch.randn_like(out_torch)
    for got, want in zip(torch.autograd.grad(out_natten, inputs, grad_out),
                         torch.autograd.grad(out_torch, inputs, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def _fake_qk(query, key, rpb, kernel_size, dilation):
    B, heads, H, W, _ = query.shape
    logits = query.new_empty(B, heads, H, W, kernel_size**2)
    for y in range(H):
        for x in range(W):
            for n, (r, c, br, bc) in enumerate(_neighbours(y, x, H, W, kernel_size, dilation)):
                logits[:, :, y, x, n] = (query[:, :, y, x] * key[:, :, r, c]).sum(-1) + rpb[:, br, bc]
    return logits


def _fake_av(attn, value, kernel_size, dilation):
    out = torch.zeros_like(value)
    H, W = value.shape[2:4]
    for y in range(H):
        for x in range(W):
            for n, (r, c, _, _) in enumerate(_neighbours(y, x, H, W, kernel_size, dilation)):
                out[:, :, y, x] += attn[:, :, y, x, n, None] * value[:, :, r, c]
    return out


def _kernel_from_attn(attn):
    return int(round(attn.shape[-1] ** 0.5))


# The three ways natten has spelled the rpb ops, written as stand-ins that follow the rules above.
FAKE_NATTEN_APIS = {
    "<0.14.5": dict(
        natten2dqkrpb=lambda q, k, rpb, dilation: _fake_qk(q, k, rpb, (rpb.shape[-1] + 1) // 2, dilation),
        natten2dav=lambda attn, v, dilation: _fake_av(attn, v, _kernel_from_attn(attn), dilation),
    ),
    "0.14.5-0.16": dict(natten2dqkrpb=_fake_qk, natten2dav=_fake_av),
    "0.17-0.19": dict(
        na2d_qk=lambda q, k, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None: _fake_qk(
            q, k, rpb, kernel_size, dilation
        ),
        na2d_av=lambda attn, v, kernel_size, dilation=1, additional_values=None, is_causal=False: _fake_av(
            attn, v, kernel_size, dilation
        ),
    ),
}


def _install_fake_natten(monkeypatch, functions):
    import sys
    import types

    package = types.ModuleType("natten")
    functional = types.ModuleType("natten.functional")
    for name, function in functions.items():
        setattr(functional, name, function)
    package.functional = functional
    monkeypatch.setitem(sys.modules, "natten", package)
    monkeypatch.setitem(sys.modules, "natten.functional", functional)
    natten_with_rpb.cache_clear()


@pytest.fixture
def restore_natten_detection():
    yield
    natten_with_rpb.cache_clear()


@pytest.mark.parametrize("api", sorted(FAKE_NATTEN_APIS))
def test_natten_route_passes_kernel_dilation_and_rpb_for_each_natten_api(monkeypatch, restore_natten_detection, api):
    _install_fake_natten(monkeypatch, FAKE_NATTEN_APIS[api])
    q, k, v, rpb = _inputs(9, 7, 3)
    out = neighborhood_attention_2d(q, k, v, rpb, 3, 2, implementation="natten")
    torch.testing.assert_close(out, naive_attention(q, k, v, rpb, 3, 2), rtol=1e-10, atol=1e-12)


def test_natten_without_rpb_is_not_used(monkeypatch, restore_natten_detection):
    _install_fake_natten(
        monkeypatch, dict(na2d_qk=lambda q, k, kernel_size, dilation=1: None, na2d_av=lambda a, v, kernel_size: None)
    )
    assert natten_with_rpb() is None
    q, k, v, rpb = _inputs(9, 7, 3)
    with pytest.raises(RuntimeError, match="natten < 0.20"):
        neighborhood_attention_2d(q, k, v, rpb, 3, 2, implementation="natten")
