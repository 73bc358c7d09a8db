"""Pixel decoders checked against naive computations (the golden test covers the deformable one
with the official weights)."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from mask2former import add_maskformer2_config
from mask2former.modeling import onednn_linear as onednn_linear_module
from mask2former.modeling.pixel_decoder import build_pixel_decoder
from mask2former.modeling.pixel_decoder.fpn import build_fpn_output_conv
from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttnTransformerEncoder, _fpn_output_conv

SHAPES = {f"res{i}": ShapeSpec(channels=8 * 2**i, stride=2**i) for i in range(2, 6)}


def _cfg(name, **head):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = name
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.MASK_FORMER.NHEADS = 4
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    for k, v in head.items():
        cfg.MODEL.SEM_SEG_HEAD[k] = v
    return cfg


def _features(h=64, w=96, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    # Odd sizes (ceil division) as a padded Swin/ResNet produces them for non-multiples of 32.
    return {
        k: torch.randn(1, v.channels, -(-h // v.stride), -(-w // v.stride), generator=g) for k, v in shapes.items()
    }


def _conv(module, x):
    """detectron2 Conv2d (conv -> norm -> activation) written out with functional ops."""
    y = F.conv2d(x, module.weight, module.bias, padding=module.padding)
    if module.norm is not None:
        y = F.group_norm(y, module.norm.num_groups, module.norm.weight, module.norm.bias, module.norm.eps)
    return F.relu(y) if module.activation is not None else y


def test_base_pixel_decoder_is_a_top_down_fpn():
    torch.manual_seed(0)
    decoder = build_pixel_decoder(_cfg("BasePixelDecoder"), SHAPES).eval()
    features = _features(h=70, w=90)
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = decoder.forward_features(features)
        y = _conv(decoder.layer_4, features["res5"])
        expected = [y]
        for level in (3, 2, 1):
            lateral = _conv(getattr(decoder, f"adapter_{level}"), features[f"res{level + 1}"])
            y = _conv(getattr(decoder, f"layer_{level}"), lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            expected.append(y)
        expected_mask = F.conv2d(y, decoder.mask_features.weight, decoder.mask_features.bias, padding=1)
    assert encoder_features is None
    assert len(multi_scale) == 3
    for a, b in zip(multi_scale, expected[:3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mask_features, expected_mask, atol=1e-5, rtol=1e-5)
    assert mask_features.shape == (1, 16, 18, 23)


def test_transformer_encoder_pixel_decoder_layout():
    torch.manual_seed(0)
    decoder = build_pixel_decoder(_cfg("TransformerEncoderPixelDecoder"), SHAPES).eval()
    keys = list(decoder.state_dict())
    # The coarsest output conv is re-created after the encoder: last in the checkpoint order.
    assert keys[-1].startswith("layer_4.") and keys.index("input_proj.weight") < keys.index("layer_4.weight")
    assert decoder.layer_4.weight.shape == (32, 32, 3, 3)  # reads the encoder output, not res5
    features = _features()
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = decoder.forward_features(features)
        expected = decoder.transformer(decoder.input_proj(features["res5"]), None, decoder.pe_layer(features["res5"]))
    assert encoder_features.shape == (1, 32, 2, 3)
    torch.testing.assert_close(encoder_features, expected)
    torch.testing.assert_close(multi_scale[0], decoder.layer_4(encoder_features))
    assert mask_features.shape == (1, 16, 16, 24)


def test_reference_points_are_pixel_centres():
    shapes = torch.tensor([[2, 3], [4, 5]])
    ref = MSDeformAttnTransformerEncoder.get_reference_points(shapes, torch.ones(2, 2, 2), "cpu")
    assert ref.shape == (2, 6 + 20, 2, 2)
    expected = []
    for h, w in shapes.tolist():
        for i in range(h):
            for j in range(w):
                expected.append([(j + 0.5) / w, (i + 0.5) / h])
    expected = torch.tensor(expected)
    for n in range(2):
        for lvl in range(2):
            torch.testing.assert_close(ref[n, :, lvl], expected)


@pytest.mark.parametrize(
    "in_features,common_stride,expected_fpn_levels,mask_size",
    [
        (["res3", "res4", "res5"], 4, 1, (18, 23)),
        (["res2", "res3", "res4", "res5"], 4, 0, (18, 23)),
        (["res4", "res5"], 4, 2, (18, 23)),
        (["res3", "res4", "res5"], 8, 0, (9, 12)),
    ],
)
def test_msdeformattn_pixel_decoder_levels(in_features, common_stride, expected_fpn_levels, mask_size):
    torch.manual_seed(0)
    cfg = _cfg(
        "MSDeformAttnPixelDecoder",
        DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES=in_features,
        COMMON_STRIDE=common_stride,
    )
    decoder = build_pixel_decoder(cfg, SHAPES).eval()
    assert decoder.num_fpn_levels == expected_fpn_levels
    assert len(decoder.input_proj) == len(in_features)
    # The encoder uses the decoder's head count, 4 points and a 1024-wide FFN whatever the config.
    layer = decoder.transformer.encoder.layers[0]
    assert (layer.self_attn.n_heads, layer.self_attn.n_points, layer.linear1.out_features) == (4, 4, 1024)
    features = _features(h=70, w=90)
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = decoder.forward_features(features)
    assert mask_features.shape == (1, 16) + mask_size
    coarsest = features[in_features[-1]].shape[-2:]
    assert encoder_features.shape[-2:] == coarsest
    assert len(multi_scale) == 3
    # Low to high resolution, each level twice the previous one (up to the odd-size rounding).
    sizes = [tuple(f.shape[-2:]) for f in multi_scale]
    assert sizes == sorted(sizes) and sizes[0] == tuple(coarsest)
    assert all(f.shape[1] == 32 for f in multi_scale)


def test_msdeformattn_pixel_decoder_rejects_unknown_encoder_feature():
    cfg = _cfg("MSDeformAttnPixelDecoder", DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES=["res3", "res6"])
    with pytest.raises(ValueError, match="res6"):
        build_pixel_decoder(cfg, SHAPES)


def test_build_pixel_decoder_requires_forward_features():
    cfg = _cfg("SemSegFPNHead")  # a Detectron2 sem-seg head: no forward_features
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    with pytest.raises(ValueError, match="forward_features"):
        build_pixel_decoder(cfg, SHAPES)


@pytest.mark.parametrize("name", ["BasePixelDecoder", "MSDeformAttnPixelDecoder", "TransformerEncoderPixelDecoder"])
def test_in_features_missing_from_backbone_is_an_error(name):
    shapes = {k: v for k, v in SHAPES.items() if k != "res2"}  # e.g. Swin with OUT_FEATURES res3-res5
    with pytest.raises(ValueError, match="res2"):
        build_pixel_decoder(_cfg(name), shapes)


def _plain_path(monkeypatch, decoder):
    """The deformable pixel decoder without its CPU fast paths: maps in the layout they come in,
    every linear layer through F.linear (MKL's GEMM), position maps computed on every call."""
    monkeypatch.setattr(onednn_linear_module, "_use_onednn", lambda x: False)
    monkeypatch.setattr(decoder, "_conv_layout", lambda x: x)
    monkeypatch.setattr(decoder, "_position_maps", lambda maps: [decoder.pe_layer(x) for x in maps])


def _fast_path_decoder():
    torch.manual_seed(0)
    decoder = build_pixel_decoder(_cfg("MSDeformAttnPixelDecoder", TRANSFORMER_ENC_LAYERS=2), SHAPES)
    with torch.no_grad():  # non-zero offsets and attention logits, so that every weight matters
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    # 256x320: 1,680 encoder tokens, enough rows for the oneDNN products (onednn_linear.MIN_ROWS).
    return decoder, _features(h=256, w=320)


def test_msdeformattn_fast_path_matches_plain_path(monkeypatch):
    decoder, features = _fast_path_decoder()
    decoder.eval()
    with torch.no_grad():
        fast = decoder.forward_features(features)
        fast_again = decoder.forward_features(features)  # cached position maps
        assert fast[0].is_contiguous(memory_format=torch.channels_last)
        _plain_path(monkeypatch, decoder)
        plain = decoder.forward_features(features)
    assert not plain[0].is_contiguous(memory_format=torch.channels_last)
    for got, again, want in zip([fast[0], fast[1], *fast[2]], [fast_again[0], fast_again[1], *fast_again[2]], [plain[0], plain[1], *plain[2]]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_msdeformattn_fast_path_gradients_match_plain_path(monkeypatch):
    decoder, features = _fast_path_decoder()
    decoder.train()

    def grads():
        inputs = {k: v.clone().requires_grad_() for k, v in features.items()}
        mask_features, encoder_features, multi_scale = decoder.forward_features(inputs)
        g = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in [mask_features, encoder_features, *multi_scale])
        params = [p for _, p in decoder.named_parameters()]
        return torch.autograd.grad(loss, params + list(inputs.values()))

    fast = grads()
    _plain_path(monkeypatch, decoder)
    plain = grads()
    names = [n for n, _ in decoder.named_parameters()] + list(features)
    # Some gradients are zero but for rounding (e.g. of a conv bias that a one-channel group norm
    # removes): absolute tolerances scale with the largest gradient.
    atol = 1e-6 * max(want.abs().max().item() for want in plain)
    for name, got, want in zip(names, fast, plain):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


def _graph_node_names(t):
    seen, todo = {}, [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and id(node) not in seen:
            seen[id(node)] = type(node).__name__
            todo.extend(n for n, _ in node.next_functions)
    return set(seen.values())


@pytest.mark.parametrize("norm", ["GN", ""])  # without a norm the conv has a bias
def test_fpn_output_conv_on_channels_last_maps_matches_the_module(norm):
    torch.manual_seed(0)
    conv = build_fpn_output_conv(16, 32, norm)
    x = torch.randn(2, 16, 9, 11).contiguous(memory_format=torch.channels_last).requires_grad_()
    params = [p for p in conv.parameters()]
    out = _fpn_output_conv(conv, x)
    assert "_PlainWeightGradientConvBackward" in _graph_node_names(out)
    grad = torch.randn(out.shape)
    got = torch.autograd.grad(out, [x] + params, grad)
    # The module itself on the plain layout: autograd's own convolution backward.
    x_plain = x.detach().contiguous().requires_grad_()
    want_out = conv(x_plain)
    want = torch.autograd.grad(want_out, [x_plain] + params, grad)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in conv.named_parameters()] == (["weight", "norm.weight", "norm.bias"] if norm else ["weight", "bias"])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # inference: the module's own forward, bit for bit
        torch.testing.assert_close(_fpn_output_conv(conv, x), conv(x), rtol=0, atol=0)


def test_msdeformattn_position_maps_are_cached_for_the_latest_sizes():
    torch.manual_seed(0)
    decoder = build_pixel_decoder(_cfg("MSDeformAttnPixelDecoder"), SHAPES)
    for sizes in [[(5, 7), (3, 4)], [(6, 4), (3, 2)], [(5, 7), (3, 4)]]:
        maps = [torch.randn(2, 3, h, w) for h, w in sizes]
        got = decoder._position_maps(maps)
        again = decoder._position_maps([torch.randn(1, 3, h, w) for h, w in sizes])
        assert all(a is b for a, b in zip(got, again))
        for x, position in zip(maps, got):
            torch.testing.assert_close(position, decoder.pe_layer(x)[:1], rtol=0, atol=0)
    assert not any("position" in k for k in decoder.state_dict())
