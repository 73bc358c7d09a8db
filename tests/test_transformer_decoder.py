"""Transformer decoders and their layers, checked against naive computations and PyTorch's own
transformer layers (the golden test covers the official weights on one case)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

from mask2former import add_maskformer2_config
from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import (
    CrossAttentionLayer,
    MultiScaleMaskedTransformerDecoder,
    _resize_planes,
)
from mask2former.modeling.transformer_decoder.mask_logits import mask_logits, mask_product
from mask2former.modeling.transformer_decoder.maskformer_transformer_decoder import (
    StandardTransformerDecoder,
)
from mask2former.modeling.transformer_decoder.transformer import (
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)


def _randomize(module, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


@pytest.mark.parametrize("pre_norm", [False, True])
def test_detr_layers_match_pytorch_layers(pre_norm):
    """Without positional embeddings, DETR's layers are PyTorch's standard transformer layers."""
    d, heads, ffn = 16, 4, 32
    ours_enc = _randomize(TransformerEncoderLayer(d, heads, ffn, dropout=0.0, normalize_before=pre_norm)).eval()
    ref_enc = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, norm_first=pre_norm).eval()
    ref_enc.load_state_dict(ours_enc.state_dict())
    ours_dec = _randomize(TransformerDecoderLayer(d, heads, ffn, dropout=0.0, normalize_before=pre_norm), 1).eval()
    ref_dec = nn.TransformerDecoderLayer(d, heads, ffn, dropout=0.0, norm_first=pre_norm).eval()
    ref_dec.load_state_dict(ours_dec.state_dict())

    src = torch.randn(7, 2, d)
    tgt = torch.randn(5, 2, d)
    with torch.no_grad():
        torch.testing.assert_close(ours_enc(src), ref_enc(src), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours_dec(tgt, src), ref_dec(tgt, src), atol=1e-5, rtol=1e-5)


def _naive_masked_attention(mha, query, key, value, mask):
    """Multi-head attention written out; `mask` (N*heads, Q, S) True = may not attend."""
    L, N, E = query.shape
    h = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = (query @ w_q.T + b_q).view(L, N, h, E // h)
    k = (key @ w_k.T + b_k).view(key.shape[0], N, h, E // h)
    v = (value @ w_v.T + b_v).view(value.shape[0], N, h, E // h)
    logits = torch.einsum("qnhd,snhd->nhqs", q, k) / (E // h) ** 0.5
    logits = logits.masked_fill(mask.view(N, h, L, -1), float("-inf"))
    out = torch.einsum("nhqs,snhd->qnhd", logits.softmax(-1), v).reshape(L, N, E)
    return out @ mha.out_proj.weight.T + mha.out_proj.bias


def test_cross_attention_layer_matches_naive():
    torch.manual_seed(0)
    d, heads = 8, 2
    layer = _randomize(CrossAttentionLayer(d, heads)).eval()
    tgt, query_pos = torch.randn(3, 2, d), torch.randn(3, 2, d)
    memory, pos = torch.randn(6, 2, d), torch.randn(6, 2, d)
    mask = torch.rand(2 * heads, 3, 6) < 0.4
    mask[:, :, 0] = False  # every query may attend somewhere
    with torch.no_grad():
        actual = layer(tgt, memory, memory_mask=mask, pos=pos, query_pos=query_pos)
        attended = _naive_masked_attention(layer.multihead_attn, tgt + query_pos, memory + pos, memory, mask)
        expected = layer.norm(tgt + attended)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def _masked_decoder(dec_layers=5, num_classes=4, hidden=16, mask_dim=16, in_channels=16, **kw):
    torch.manual_seed(0)
    return MultiScaleMaskedTransformerDecoder(
        in_channels,
        num_classes=num_classes,
        hidden_dim=hidden,
        num_queries=6,
        nheads=4,
        dim_feedforward=32,
        dec_layers=dec_layers,
        pre_norm=kw.get("pre_norm", False),
        mask_dim=mask_dim,
        enforce_input_project=kw.get("enforce_input_project", False),
    ).eval()


def _multi_scale_inputs(batch=2, channels=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(batch, channels, h, w, generator=g) for h, w in ((3, 4), (6, 8), (12, 16))]
    mask_features = torch.randn(batch, 16, 24, 32, generator=g)
    return x, mask_features


def _record_attention_masks(decoder):
    """Appends (memory length, attention mask) of every cross-attention call to the returned list."""
    seen = []

    def record(module, args, kwargs):
        seen.append((args[1].shape[0], kwargs["memory_mask"].clone()))

    for layer in decoder.transformer_cross_attention_layers:
        layer.register_forward_pre_hook(record, with_kwargs=True)
    return seen


def test_masked_decoder_round_robin_and_attention_masks():
    decoder = _masked_decoder(dec_layers=5).train()  # training mode returns the earlier predictions
    x, mask_features = _multi_scale_inputs()
    seen = _record_attention_masks(decoder)
    with torch.no_grad():
        out = decoder(x, mask_features)

    sizes = [h * w for h, w in ((3, 4), (6, 8), (12, 16))]
    assert [s for s, _ in seen] == [sizes[i % 3] for i in range(5)]

    # Layer i's mask comes from the prediction before it (aux i), resized to level i % 3.
    predictions = [a["pred_masks"] for a in out["aux_outputs"]]
    for i, (_, mask) in enumerate(seen):
        h, w = x[i % 3].shape[-2:]
        resized = F.interpolate(predictions[i], size=(h, w), mode="bilinear", align_corners=False)
        expected = resized.sigmoid().flatten(2) < 0.5  # (N, Q, h*w)
        for n in range(expected.shape[0]):
            for q in range(expected.shape[1]):
                if expected[n, q].all():
                    expected[n, q] = False  # a query with an empty mask attends everywhere
        expected = expected[:, None].expand(-1, decoder.num_heads, -1, -1).reshape(-1, *expected.shape[1:])
        assert torch.equal(mask, expected), f"layer {i}"


@pytest.mark.parametrize("size", [(64, 64), (16, 16), (30, 24), (50, 70)])
def test_resize_planes_resizes_every_plane(size):
    """Masks (N, Q, T, H, W) resized plane by plane: the values of resizing the stack as the
    channels of one image (the reference implementation's call), up to the last bit."""
    g = torch.Generator().manual_seed(0)
    masks = torch.randn(2, 30, 2, 40, 36, generator=g) * 5
    resized = _resize_planes(masks, size)
    assert resized.shape == (2, 30, 2) + size
    reference = F.interpolate(masks.flatten(1, 2), size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized, reference.view(resized.shape), rtol=2e-7, atol=1e-6)


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_masked_decoder_inference_path_matches_training_path(seed, pre_norm):
    """In eval mode the intermediate masks are predicted at the attended level's size from resized
    pixel embeddings instead of resized from the full-size masks: the same attention masks up to
    logits within rounding noise of 0, hence the same outputs (bit for bit when no mask differs);
    no earlier predictions are returned."""
    decoder = _masked_decoder(dec_layers=5, pre_norm=pre_norm)
    _randomize(decoder, seed=seed, scale=0.3)
    x, mask_features = _multi_scale_inputs(seed=seed)
    inference_masks = _record_attention_masks(decoder)
    with torch.no_grad():
        out = decoder(x, mask_features)
        decoder.train()
        training_masks = _record_attention_masks(decoder)
        reference = decoder(x, mask_features)
    assert out["aux_outputs"] == [] and len(reference["aux_outputs"]) == 5
    # The first hooks also saw the training run.
    inference_masks = inference_masks[:5]
    assert len(training_masks) == 5
    predictions = [a["pred_masks"] for a in reference["aux_outputs"]]
    same_masks = True
    for i, ((_, a), (_, b)) in enumerate(zip(inference_masks, training_masks)):
        h, w = x[i % 3].shape[-2:]
        logits = F.interpolate(predictions[i], size=(h, w), mode="bilinear", align_corners=False).flatten(2)
        near_zero = logits.abs().repeat_interleave(decoder.num_heads, dim=0) < 1e-5
        assert not (a != b)[~near_zero].any(), f"layer {i}"
        same_masks &= torch.equal(a, b)
    torch.testing.assert_close(out["pred_logits"], reference["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_masks"], reference["pred_masks"], atol=1e-5, rtol=1e-5)
    if same_masks:
        assert torch.equal(out["pred_masks"], reference["pred_masks"])
        assert torch.equal(out["pred_logits"], reference["pred_logits"])


def test_masked_decoder_fully_masked_rows_are_released():
    """A query whose predicted mask is empty at the level may attend everywhere (no NaN)."""
    decoder = _masked_decoder(dec_layers=1)
    x, _ = _multi_scale_inputs(batch=1)
    # Every query's mask embedding is (10, 0, ..., 0) and mask features are (-1, 0, ..., 0):
    # all mask logits are -10, so every query's mask is empty.
    with torch.no_grad():
        decoder.mask_embed.layers[-1].weight.zero_()
        decoder.mask_embed.layers[-1].bias.zero_()
        decoder.mask_embed.layers[-1].bias[0] = 10.0
    mask_features = torch.zeros(1, 16, 24, 32)
    mask_features[:, 0] = -1.0
    seen = []
    decoder.transformer_cross_attention_layers[0].register_forward_pre_hook(
        lambda m, a, k: seen.append(k["memory_mask"]), with_kwargs=True
    )
    with torch.no_grad():
        out = decoder(x, mask_features)
    (mask,) = seen
    assert mask.shape == (4, 6, 12)
    assert not mask.any()
    assert torch.isfinite(out["pred_logits"]).all()


def test_masked_decoder_outputs_and_aux_from_learnable_queries():
    decoder = _masked_decoder(dec_layers=4, num_classes=4).train()
    x, mask_features = _multi_scale_inputs()
    with torch.no_grad():
        out = decoder(x, mask_features)
        assert out["pred_logits"].shape == (2, 6, 5)
        assert out["pred_masks"].shape == (2, 6, 24, 32)
        assert len(out["aux_outputs"]) == 4
        # The first prediction uses the learnable query features alone.
        q = decoder.decoder_norm(decoder.query_feat.weight)
        torch.testing.assert_close(out["aux_outputs"][0]["pred_logits"][0], decoder.class_embed(q))
        m = decoder.mask_embed.layers
        emb = m[2](F.relu(m[1](F.relu(m[0](q)))))
        torch.testing.assert_close(
            out["aux_outputs"][0]["pred_masks"][1], torch.einsum("qc,chw->qhw", emb, mask_features[1]),
            atol=1e-5, rtol=1e-5,
        )


@pytest.mark.parametrize("pre_norm", [False, True])
def test_masked_decoder_images_are_independent(pre_norm):
    """Batch/head ordering of the attention masks: a batch gives each image's own result."""
    decoder = _masked_decoder(dec_layers=4, pre_norm=pre_norm)
    x, mask_features = _multi_scale_inputs(batch=3, seed=1)
    with torch.no_grad():
        batched = decoder(x, mask_features)
        for n in range(3):
            single = decoder([f[n : n + 1] for f in x], mask_features[n : n + 1])
            torch.testing.assert_close(single["pred_masks"], batched["pred_masks"][n : n + 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(single["pred_logits"], batched["pred_logits"][n : n + 1], atol=1e-5, rtol=1e-5)


def _random_mask_inputs(seed, sizes, channels_last):
    """Query embeddings (N, Q, C), pixel embeddings (N, C, H, W) (channels last if asked) and an
    output gradient (N, Q, H, W) for sizes (N, Q, C, H, W), drawn in that order from `seed`."""
    n, q, c, h, w = sizes
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(n, q, c, generator=g)
    features = torch.randn(n, c, h, w, generator=g)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    return embed, features, torch.randn(n, q, h, w, generator=g)


def _mask_logits_and_einsum(embed, features, grad, autocast=False):
    """(logits, embedding gradient, feature gradient) of mask_logits, then of the plain einsum,
    for the same inputs and output gradient (the forward under bfloat16 autocast if asked)."""
    results = []
    for fn in (mask_logits, lambda e, f: torch.einsum("bqc,bchw->bqhw", e, f)):
        e, f = embed.clone().requires_grad_(), features.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(e, f)
        out.backward(grad)
        results.append((out, e.grad, f.grad))
    return results


@pytest.mark.parametrize("channels_last", [False, True])
def test_mask_logits_backward_equals_einsum_with_queries_without_gradient(channels_last):
    """Same values as the einsum; gradients of the einsum's backward, with whole queries (and a
    whole image) without gradient skipped, in the features' memory layout."""
    embed, features, grad = _random_mask_inputs(0, (3, 7, 5, 4, 6), channels_last)
    grad[0, [1, 2, 5]] = 0
    grad[1] = 0
    grad[2, 3, 1:] = 0  # one non-zero entry keeps a query

    results = _mask_logits_and_einsum(embed, features, grad)
    (out, grad_embed, grad_features), (ref_out, ref_embed, ref_features) = results
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad_embed, ref_embed)
    torch.testing.assert_close(grad_features, ref_features)
    assert torch.equal(grad_embed[1], torch.zeros(7, 5)) and torch.equal(grad_features[1], torch.zeros(5, 4, 6))
    assert grad_features.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    # Only the features need a gradient.
    f = features.clone().requires_grad_()
    mask_logits(embed, f).backward(grad)
    torch.testing.assert_close(f.grad, ref_features)


@pytest.mark.parametrize("channels_last", [False, True])
def test_mask_logits_at_feature_map_size_match_einsum(channels_last):
    """At a real feature-map size (above MIN_ROWS pixels) the products go through oneDNN on the CPU:
    values and gradients equal the einsum's to float32 rounding, in the features' layout."""
    embed, features, grad = _random_mask_inputs(2, (2, 20, 16, 40, 48), channels_last)
    grad[0, 3:] = 0
    grad[1, :17] = 0
    results = _mask_logits_and_einsum(embed, features, grad)
    # The embeddings' gradients sum 1,920 products of unit-scale values (magnitude ~40): float32
    # rounding of a different summation order reaches ~2e-5 there.
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert results[0][2].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.no_grad():
        torch.testing.assert_close(mask_product(embed, features), results[1][0], rtol=1e-5, atol=1e-5)


def test_mask_logits_under_autocast_follow_the_einsum():
    """Autocast (bfloat16 on CPU): the products run in the autocast dtype like the einsum's, the
    gradients come back in the inputs' dtype."""
    g = torch.Generator().manual_seed(1)
    embed, features = torch.randn(2, 6, 8, generator=g), torch.randn(2, 8, 5, 7, generator=g)
    grad = torch.randn(2, 6, 5, 7, generator=g).bfloat16()
    grad[:, 2:] = 0
    results = _mask_logits_and_einsum(embed, features, grad, autocast=True)
    for ours, ref in zip(*results):
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)


def test_masked_decoder_training_gradients_equal_einsum_gradients():
    """In training the decoder's mask logits take the sparse backward: the gradients of a loss on
    a few queries' masks are those of the plain einsum."""
    decoder = _masked_decoder(dec_layers=4).train()
    x, mask_features = _multi_scale_inputs()
    grads = []
    for sparse in (True, False):
        if not sparse:
            decoder.mask_logits = lambda e, f: torch.einsum("bqc,bchw->bqhw", e, f)
        decoder.zero_grad()
        features = mask_features.clone().requires_grad_()
        out = decoder(x, features)
        loss = out["pred_masks"][0, [1, 4]].sigmoid().sum() + out["pred_logits"].sum()
        loss = loss + sum(a["pred_masks"][1, 2].square().sum() for a in out["aux_outputs"])
        loss.backward()
        grads.append([features.grad] + [p.grad.clone() for p in decoder.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        # Rounding of sums with cancellations: relative to each gradient's scale.
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_masked_decoder_input_projection_and_checks():
    decoder = _masked_decoder(in_channels=8)
    assert all(m.weight.shape == (16, 8, 1, 1) for m in decoder.input_proj)
    assert all(len(list(p.parameters())) == 0 for p in _masked_decoder().input_proj)
    assert all(len(list(p.parameters())) == 2 for p in _masked_decoder(enforce_input_project=True).input_proj)
    x, mask_features = _multi_scale_inputs()
    with pytest.raises(ValueError, match="3 feature levels"):
        _masked_decoder()(x[:2], mask_features)


def test_masked_decoder_loads_pre_v2_checkpoints():
    """Old checkpoints call the learnable query features `static_query`."""
    decoder = _masked_decoder()
    state = {k.replace("query_feat", "static_query"): v.clone() + 1 for k, v in decoder.state_dict().items()}
    fresh = _masked_decoder()
    fresh.load_state_dict(state, strict=True)  # a plain dict carries no version metadata
    torch.testing.assert_close(fresh.query_feat.weight, decoder.query_feat.weight + 1)


def _standard_decoder(deep_supervision=True, in_channels=16, dec_layers=3, mask_classification=True):
    torch.manual_seed(0)
    return StandardTransformerDecoder(
        in_channels,
        mask_classification,
        num_classes=3,
        hidden_dim=16,
        num_queries=5,
        nheads=2,
        dropout=0.0,
        dim_feedforward=32,
        enc_layers=1,
        dec_layers=dec_layers,
        pre_norm=False,
        deep_supervision=deep_supervision,
        mask_dim=8,
        enforce_input_project=False,
    ).eval()


def test_standard_decoder_outputs():
    x = torch.randn(2, 24, 4, 5)
    mask_features = torch.randn(2, 8, 16, 20)
    decoder = _standard_decoder(in_channels=24)
    assert decoder.input_proj.weight.shape == (16, 24, 1, 1)
    with torch.no_grad():
        out = decoder(x, mask_features)
        assert out["pred_logits"].shape == (2, 5, 4)
        assert out["pred_masks"].shape == (2, 5, 16, 20)
        assert len(out["aux_outputs"]) == 2
        no_aux = _standard_decoder(deep_supervision=False, in_channels=24)(x, mask_features)
    assert "aux_outputs" not in no_aux
    # Same weights, same final prediction with or without the intermediate ones.
    torch.testing.assert_close(no_aux["pred_masks"], out["pred_masks"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(no_aux["pred_logits"], out["pred_logits"], atol=1e-5, rtol=1e-5)


def _head_cfg(pixel_decoder, transformer_decoder, in_feature):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NAME = "MaskFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = pixel_decoder
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = transformer_decoder
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = in_feature
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 4
    cfg.MODEL.MASK_FORMER.NHEADS = 4
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 32
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    return cfg


_SHAPES = {f"res{i}": ShapeSpec(channels=8 * 2**i, stride=2**i) for i in range(2, 6)}


def _features(batch=1, h=64, w=96):
    torch.manual_seed(0)
    return {k: torch.randn(batch, v.channels, h // v.stride, w // v.stride) for k, v in _SHAPES.items()}


@pytest.mark.parametrize(
    "pixel_decoder,transformer_decoder,in_feature,num_aux",
    [
        ("MSDeformAttnPixelDecoder", "MultiScaleMaskedTransformerDecoder", "multi_scale_pixel_decoder", 2),
        ("BasePixelDecoder", "MultiScaleMaskedTransformerDecoder", "multi_scale_pixel_decoder", 2),
        ("TransformerEncoderPixelDecoder", "StandardTransformerDecoder", "transformer_encoder", 2),
        ("BasePixelDecoder", "StandardTransformerDecoder", "pixel_embedding", 2),
        ("BasePixelDecoder", "StandardTransformerDecoder", "res5", 2),
    ],
)
def test_mask_former_head_variants(pixel_decoder, transformer_decoder, in_feature, num_aux):
    head = build_sem_seg_head(_head_cfg(pixel_decoder, transformer_decoder, in_feature), _SHAPES).eval()
    with torch.no_grad():
        out = head(_features())
    assert out["pred_logits"].shape == (1, 4, 4)
    assert out["pred_masks"].shape == (1, 4, 16, 24)
    # The masked-attention decoder returns the earlier predictions in training only.
    assert len(out["aux_outputs"]) == (0 if transformer_decoder == "MultiScaleMaskedTransformerDecoder" else num_aux)
    with torch.no_grad():
        assert len(head.train()(_features())["aux_outputs"]) == num_aux


def test_mask_former_head_rejects_bad_inputs():
    with pytest.raises(ValueError, match="TRANSFORMER_IN_FEATURE"):
        build_sem_seg_head(_head_cfg("BasePixelDecoder", "StandardTransformerDecoder", "res9"), _SHAPES)
    head = build_sem_seg_head(
        _head_cfg("BasePixelDecoder", "StandardTransformerDecoder", "transformer_encoder"), _SHAPES
    )
    with pytest.raises(ValueError, match="TransformerEncoderPixelDecoder"):
        head(_features())


def test_mask_former_head_loads_pre_v2_checkpoints():
    """Old checkpoints keep the pixel decoder's weights directly under the head."""
    cfg = _head_cfg("MSDeformAttnPixelDecoder", "MultiScaleMaskedTransformerDecoder", "multi_scale_pixel_decoder")
    model = nn.Module()
    model.sem_seg_head = build_sem_seg_head(cfg, _SHAPES)
    state = {
        k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v + 1 for k, v in model.state_dict().items()
    }
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(
        model.sem_seg_head.pixel_decoder.mask_features.weight, state["sem_seg_head.mask_features.weight"]
    )
