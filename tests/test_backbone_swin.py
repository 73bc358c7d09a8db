"""Swin backbone checks against independent, naive computations (the golden test covers the
official weights on one input size; these cover padding, shifting and odd sizes)."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

from mask2former import add_maskformer2_config
from mask2former.modeling import onednn_linear as onednn_linear_module
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    shifted_window_mask,
    window_partition,
    window_token_index,
)


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def _naive_block(block, x, H, W):
    """
    Swin block computed token by token: full attention over the zero-padded, cyclically shifted
    map where a pair of tokens may interact only inside one window (others get -inf), pairs that
    come from different sides of the cyclic wrap get -100 (as the official mask does), and the
    bias is looked up from (dy, dx) directly.
    """
    B, L, C = x.shape
    ws, shift = block.window_size, block.shift_size
    heads = block.num_heads
    attn = block.attn
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws

    y = block.norm1(x).view(B, H, W, C)
    y = F.pad(y, (0, 0, 0, Wp - W, 0, Hp - H))  # padded tokens are zeros and are NOT masked
    y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
    tokens = y.reshape(B, Hp * Wp, C)

    rows = torch.arange(Hp).repeat_interleave(Wp)
    cols = torch.arange(Wp).repeat(Hp)
    same_window = (rows[:, None] // ws == rows[None, :] // ws) & (cols[:, None] // ws == cols[None, :] // ws)
    # Position r of the rolled map holds original position r + shift; it wrapped if that is >= Hp.
    row_wrapped = (rows + shift) >= Hp
    col_wrapped = (cols + shift) >= Wp
    different_side = (row_wrapped[:, None] != row_wrapped[None, :]) | (col_wrapped[:, None] != col_wrapped[None, :])
    if shift == 0:
        different_side = torch.zeros_like(different_side)
    dy = (rows[:, None] % ws) - (rows[None, :] % ws)
    dx = (cols[:, None] % ws) - (cols[None, :] % ws)
    table_index = (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)

    qkv = attn.qkv(tokens).view(B, Hp * Wp, 3, heads, C // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = torch.einsum("bihd,bjhd->bhij", q * attn.scale, k)
    logits = logits + attn.relative_position_bias_table[table_index].permute(2, 0, 1)
    logits = logits - 100.0 * different_side.float()
    logits = logits.masked_fill(~same_window, float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", logits.softmax(-1), v).reshape(B, Hp * Wp, C)
    out = attn.proj(out).view(B, Hp, Wp, C)
    out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))[:, :H, :W].reshape(B, H * W, C)
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("H,W,shift", [(9, 11, 2), (8, 8, 2), (3, 5, 2), (12, 9, 0), (5, 6, 0)])
def test_block_matches_naive_full_attention(H, W, shift):
    torch.manual_seed(0)
    block = _randomize(SwinTransformerBlock(dim=8, num_heads=2, window_size=4, shift_size=shift)).eval()
    x = torch.randn(2, H * W, 8)
    # Built by the stage in the model; only used by shifting blocks.
    mask = shifted_window_mask(H, W, 4, 2, x.device)
    with torch.no_grad():
        actual = block(x, H, W, mask)
        expected = _naive_block(block, x, H, W)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_relative_position_index_enumerates_offsets():
    ws = 3
    block = SwinTransformerBlock(dim=4, num_heads=1, window_size=ws)
    index = block.attn.relative_position_index
    assert index.dtype == torch.int64 and index.shape == (ws * ws, ws * ws)
    assert "attn.relative_position_index" in block.state_dict()  # persistent: part of checkpoints
    for i in range(ws * ws):
        for j in range(ws * ws):
            dy = i // ws - j // ws
            dx = i % ws - j % ws
            assert index[i, j].item() == (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)
    assert block.attn.relative_position_bias_table.shape == ((2 * ws - 1) ** 2, 1)


@pytest.mark.parametrize("H,W", [(6, 8), (7, 5), (1, 1)])
def test_patch_merging_odd_sizes(H, W):
    torch.manual_seed(0)
    merge = _randomize(PatchMerging(dim=3)).eval()
    x = torch.randn(2, H * W, 3)
    with torch.no_grad():
        actual = merge(x, H, W)
    grid = x.view(2, H, W, 3)
    Ho, Wo = (H + 1) // 2, (W + 1) // 2
    expected_in = torch.zeros(2, Ho, Wo, 12)
    for i in range(Ho):
        for j in range(Wo):
            parts = []
            for di, dj in ((0, 0), (1, 0), (0, 1), (1, 1)):
                r, c = 2 * i + di, 2 * j + dj
                parts.append(grid[:, r, c] if r < H and c < W else torch.zeros(2, 3))
            expected_in[:, i, j] = torch.cat(parts, -1)
    with torch.no_grad():
        expected = merge.reduction(merge.norm(expected_in.view(2, Ho * Wo, 12)))
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def _tiny_cfg(**swin):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    cfg.MODEL.SWIN.EMBED_DIM = 16
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.SWIN.WINDOW_SIZE = 4
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    for k, v in swin.items():
        cfg.MODEL.SWIN[k] = v
    return cfg


def test_output_shapes_strides_on_odd_input():
    torch.manual_seed(0)
    backbone = build_backbone(_tiny_cfg()).eval()
    assert isinstance(backbone, D2SwinTransformer)
    assert backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (16, 4),
        "res3": (32, 8),
        "res4": (64, 16),
        "res5": (128, 32),
    }
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 70, 90))
    # Patch embedding pads to a multiple of 4, each merging pads odd sizes: ceil divisions.
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 16, 18, 23),
        "res3": (1, 32, 9, 12),
        "res4": (1, 64, 5, 6),
        "res5": (1, 128, 3, 3),
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def test_out_features_subset_and_unknown():
    backbone = build_backbone(_tiny_cfg(OUT_FEATURES=["res3", "res5"]))
    assert sorted(backbone.output_shape()) == ["res3", "res5"]
    with torch.no_grad():
        assert sorted(backbone.eval()(torch.randn(1, 3, 64, 64))) == ["res3", "res5"]
    # Checkpoints always carry the four per-stage norms.
    assert all(f"norm{i}.weight" in backbone.state_dict() for i in range(4))
    with pytest.raises(ValueError, match="res6"):
        build_backbone(_tiny_cfg(OUT_FEATURES=["res6"]))


def test_rejects_non_4d_input():
    backbone = build_backbone(_tiny_cfg())
    with pytest.raises(ValueError, match="N, C, H, W"):
        backbone(torch.randn(3, 32, 32))


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_backbone(_tiny_cfg()).train()
    checkpointed = build_backbone(_tiny_cfg(USE_CHECKPOINT=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 36, 32)
    grads = []
    for model in (plain, checkpointed):
        out = model(x)
        sum(v.square().mean() for v in out.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_drop_path_is_stochastic_in_training_only():
    torch.manual_seed(0)
    backbone = build_backbone(_tiny_cfg(DROP_PATH_RATE=0.5))
    x = torch.randn(1, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        a, b = backbone(x)["res5"], backbone(x)["res5"]
    assert torch.equal(a, b)
    backbone.train()
    with torch.no_grad():
        c, d = backbone(x)["res5"], backbone(x)["res5"]
    assert not torch.equal(c, d)
    # Stochastic depth grows linearly from 0 (first block) to the rate (last block).
    rates = [
        getattr(blk.drop_path, "drop_prob", 0.0) for layer in backbone.layers for blk in layer.blocks
    ]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.5, 8))


def test_absolute_position_embedding_option():
    backbone = build_backbone(_tiny_cfg(APE=True, PRETRAIN_IMG_SIZE=32))
    assert backbone.state_dict()["absolute_pos_embed"].shape == (1, 16, 8, 8)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 48, 40))
    assert out["res2"].shape == (1, 16, 12, 10)


@pytest.mark.parametrize("H,W,ws,shift", [(9, 11, 4, 2), (8, 8, 4, 0), (3, 5, 4, 2), (14, 7, 7, 3)])
def test_window_token_index_is_pad_roll_partition(H, W, ws, shift):
    gather, padded, scatter = window_token_index(H, W, ws, shift, torch.device("cpu"))
    # The straightforward way: token ids (padding -1) through F.pad, torch.roll, window_partition.
    ids = torch.arange(H * W, dtype=torch.float32).view(1, H, W, 1)
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    ids = F.pad(ids + 1, (0, 0, 0, Wp - W, 0, Hp - H)) - 1
    ids = torch.roll(ids, shifts=(-shift, -shift), dims=(1, 2))
    expected = window_partition(ids, ws).reshape(-1).long()
    assert torch.equal(padded, expected < 0)
    assert torch.equal(gather[~padded], expected[~padded])
    assert torch.equal(gather[scatter], torch.arange(H * W))  # scatter inverts gather


def _straightforward_window_attention(attn, x, mask):
    """The windowed attention written out with F.linear and explicit softmax (no cache, no
    fused kernel): bias looked up from the table, then the mask added per image."""
    B_, N, C = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(B_, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * attn.scale
    table_rows = attn.relative_position_index.view(-1)
    logits = logits + attn.relative_position_bias_table[table_rows].view(N, N, heads).permute(2, 0, 1)
    if mask is not None:
        logits = (logits.view(-1, mask.shape[0], heads, N, N) + mask[None, :, None]).view(B_, heads, N, N)
    out = torch.einsum("bhij,bhjd->bihd", logits.softmax(-1), v).reshape(B_, N, C)
    return F.linear(out, attn.proj.weight, attn.proj.bias)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_with_cached_bias_matches_straightforward(shifted):
    torch.manual_seed(0)
    attn = _randomize(WindowAttention(16, (4, 4), num_heads=2)).eval()
    mask = shifted_window_mask(6, 10, 4, 2, torch.device("cpu")) if shifted else None  # 6 windows
    x = torch.randn(2 * 6, 16, 16)  # two images
    with torch.no_grad():
        first = attn(x, mask)
        second = attn(x, mask)  # from the cache
        expected = _straightforward_window_attention(attn, x, mask)
        torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(second, first)
        # New weights (as load_state_dict writes them) are not answered from the cache.
        attn.relative_position_bias_table.mul_(2.0)
        torch.testing.assert_close(attn(x, mask), _straightforward_window_attention(attn, x, mask), atol=1e-5, rtol=1e-5)
    # With gradients into the table: the unfused formula, same values and a gradient for the table.
    out = attn(x, mask)
    torch.testing.assert_close(out.detach(), _straightforward_window_attention(attn, x, mask).detach(), atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    table_grad = attn.relative_position_bias_table.grad.clone()
    attn.zero_grad()
    _straightforward_window_attention(attn, x, mask).square().sum().backward()
    torch.testing.assert_close(table_grad, attn.relative_position_bias_table.grad, atol=1e-4, rtol=1e-4)


def test_block_gradients_match_naive_full_attention():
    torch.manual_seed(0)
    block = _randomize(SwinTransformerBlock(dim=8, num_heads=2, window_size=4, shift_size=2)).train()
    H, W = 9, 11
    mask = shifted_window_mask(H, W, 4, 2, torch.device("cpu"))
    grads = []
    for compute in (lambda x: block(x, H, W, mask), lambda x: _naive_block(block, x, H, W)):
        x = torch.randn(2, H * W, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        block.zero_grad()
        compute(x).square().sum().backward()
        grads.append([x.grad] + [p.grad.clone() for p in block.parameters()])
    for actual, expected in zip(*grads):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_backbone_onednn_linear_matches_f_linear(monkeypatch):
    """The dense layers through oneDNN (>= MIN_ROWS rows) against F.linear everywhere."""
    torch.manual_seed(0)
    backbone = build_backbone(_tiny_cfg()).eval()
    x = torch.randn(1, 3, 136, 164)  # 34 x 41 = 1394 tokens in the first stage: oneDNN's
    with torch.no_grad():
        fast = backbone(x)
        monkeypatch.setattr(onednn_linear_module, "MIN_ROWS", 1 << 40)
        reference = backbone(x)
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], atol=1e-5, rtol=1e-5)


def test_cached_bias_follows_a_new_mask_of_the_same_shape():
    """Masks made afresh per call (as SeMask's stages do), under inference mode (no version
    counters): 4x8 and 8x4 windows of 4 give masks of the same shape but different values."""
    torch.manual_seed(0)
    attn = _randomize(WindowAttention(16, (4, 4), num_heads=2)).eval()
    x = torch.randn(2, 16, 16)
    with torch.inference_mode():
        for H, W in [(4, 8), (8, 4), (4, 8), (8, 4)]:
            mask = shifted_window_mask(H, W, 4, 2, torch.device("cpu"))
            torch.testing.assert_close(
                attn(x, mask), _straightforward_window_attention(attn, x, mask), atol=1e-5, rtol=1e-5
            )
            del mask
