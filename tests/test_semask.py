"""SeMask-Swin backbone, BranchMaskFormerHead and SeMaskMaskFormer."""
import os

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.structures import Instances

from mask2former import add_maskformer2_config
from mask2former.modeling.backbone.semask_swin import SemanticAttention, SemanticLayer, last_stage_is_global
from mask2former.modeling.meta_arch.branch_mask_former_head import fuse_semantic_maps

from golden_keys import read_key_list, state_dict_entries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADE_CONFIG = "configs/ade20k/semantic-segmentation/semask_swin/maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.yaml"
CITYSCAPES_CONFIG = "configs/cityscapes/semantic-segmentation/semask_swin/maskformer2_semask_swin_large_IN21k_384_bs16_90k.yaml"
TINY_CONFIG = "tests/data/golden/tiny_swin_panoptic/config.yaml"

SWIN_VARIANTS = {
    "tiny": dict(EMBED_DIM=96, DEPTHS=[2, 2, 6, 2], NUM_HEADS=[3, 6, 12, 24], WINDOW_SIZE=7),
    "small": dict(EMBED_DIM=96, DEPTHS=[2, 2, 18, 2], NUM_HEADS=[3, 6, 12, 24], WINDOW_SIZE=7),
    "base": dict(EMBED_DIM=128, DEPTHS=[2, 2, 18, 2], NUM_HEADS=[4, 8, 16, 32], WINDOW_SIZE=12),
    "large": dict(EMBED_DIM=192, DEPTHS=[2, 2, 18, 2], NUM_HEADS=[6, 12, 24, 48], WINDOW_SIZE=12),
}


def config(path=None):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    if path:
        cfg.merge_from_file(os.path.join(REPO, path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_meta_model(cfg):
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def _randomize(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)
    return module


# ------------------------------------------------------------------------------------------------
# semantic attention


def test_semantic_attention_formula():
    torch.manual_seed(0)
    block = _randomize(SemanticAttention(dim=6, num_classes=4).double()).eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    class_scores, out = block(x)
    for b in range(2):
        q = x[b] @ block.mlp_cls_q.weight.T + block.mlp_cls_q.bias  # (tokens, classes)
        k = x[b] @ block.mlp_cls_k.weight.T + block.mlp_cls_k.bias
        v = x[b] @ block.mlp_v.weight.T + block.mlp_v.bias
        affinity = torch.exp(q @ k.T)
        affinity = affinity / affinity.sum(dim=1, keepdim=True)
        expected = x[b] + block.gamma * ((affinity @ v) @ block.mlp_res.weight.T + block.mlp_res.bias)
        torch.testing.assert_close(class_scores[b], q)
        torch.testing.assert_close(out[b], expected)


def test_semantic_attention_starts_as_identity():
    block = SemanticAttention(dim=8, num_classes=3).eval()
    x = torch.randn(2, 7, 8)
    torch.testing.assert_close(block(x)[1], x)


def test_windowed_semantic_layer_matches_per_window_loop():
    torch.manual_seed(0)
    H, W, C, K, ws = 6, 9, 4, 3, 4
    layer = _randomize(SemanticLayer(C, K, num_blocks=2, window_size=ws).double()).eval()
    x = torch.randn(2, H * W, C, dtype=torch.float64)
    class_scores, out = layer(x, H, W)

    # Reference: normalise, zero-pad to 8x12, run the blocks on each 4x4 window, crop.
    normed = F.layer_norm(x, (C,), layer.norm1.weight, layer.norm1.bias).view(2, H, W, C)
    padded = F.pad(normed, (0, 0, 0, 12 - W, 0, 8 - H))
    expected_out = torch.zeros(2, 8, 12, C, dtype=torch.float64)
    expected_scores = torch.zeros(2, 8, 12, K, dtype=torch.float64)
    for top in range(0, 8, ws):
        for left in range(0, 12, ws):
            tokens = padded[:, top:top + ws, left:left + ws].reshape(2, ws * ws, C)
            for block in layer.class_injection:
                scores, tokens = block(tokens)
            expected_out[:, top:top + ws, left:left + ws] = tokens.view(2, ws, ws, C)
            expected_scores[:, top:top + ws, left:left + ws] = scores.view(2, ws, ws, K)
    torch.testing.assert_close(out, expected_out[:, :H, :W].reshape(2, H * W, C))
    torch.testing.assert_close(class_scores, expected_scores[:, :H, :W].reshape(2, H * W, K))


def test_global_semantic_layer_attends_over_all_tokens():
    torch.manual_seed(0)
    layer = _randomize(SemanticLayer(4, 3, num_blocks=1, window_size=None).double()).eval()
    x = torch.randn(1, 30, 4, dtype=torch.float64)
    normed = F.layer_norm(x, (4,), layer.norm1.weight, layer.norm1.bias)
    expected_scores, expected_out = layer.class_injection[0](normed)
    scores, out = layer(x, 5, 6)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(scores, expected_scores)


def test_last_stage_attention_option():
    assert last_stage_is_global("auto", 150) is True
    assert last_stage_is_global("auto", 19) is False
    assert last_stage_is_global("global", 19) is True
    assert last_stage_is_global("window", 150) is False
    with pytest.raises(ValueError, match="SEM_LAST_STAGE_ATTENTION"):
        last_stage_is_global("local", 150)


# ------------------------------------------------------------------------------------------------
# published layouts and configs


def test_ade20k_model_matches_published_keys():
    model = build_meta_model(config(ADE_CONFIG))
    entries = state_dict_entries(model)
    expected, total = read_key_list("semask_swin_large_ade20k_semantic.txt")
    assert entries == expected
    assert sum(p.numel() for p in model.parameters()) == total
    # The facts observed on the original: 44 more entries and 7,143,604 more parameters than Swin-L.
    swin_large, swin_total = read_key_list("ade20k_semantic_maskformer2_swin_large_IN21k_384_bs16_160k_res640.txt")
    assert len(entries) - len(swin_large) == 44
    assert total - swin_total == 7_143_604
    layers = model.backbone.layers
    assert [layers[i].semantic_layer.window_size for i in range(4)] == [12, 12, 12, None]


def test_cityscapes_config_builds_with_windowed_last_stage():
    cfg = config(CITYSCAPES_CONFIG)
    model = build_meta_model(cfg)
    assert type(model).__name__ == "SeMaskMaskFormer"
    assert type(model.sem_seg_head).__name__ == "BranchMaskFormerHead"
    layers = model.backbone.layers
    assert [layers[i].semantic_layer.window_size for i in range(4)] == [7, 7, 7, 7]
    assert model.backbone.layers[0].semantic_layer.class_injection[0].mlp_cls_q.out_features == 19


@pytest.mark.parametrize("variant", sorted(SWIN_VARIANTS))
def test_variant_builds_and_runs(variant):
    cfg = config()
    cfg.MODEL.BACKBONE.NAME = "D2SeMaskSwinTransformer"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150
    for key, value in SWIN_VARIANTS[variant].items():
        cfg.MODEL.SWIN[key] = value
    with torch.device("meta"):
        full = build_backbone(cfg)
    assert [len(layer.blocks) for layer in full.layers] == SWIN_VARIANTS[variant]["DEPTHS"]

    # Forward with one block per stage (the variant's widths, heads and windows).
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 1, 1]
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        features, semantic_maps = backbone(torch.randn(1, 3, 96, 64))
    dim = SWIN_VARIANTS[variant]["EMBED_DIM"]
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        assert features[name].shape == (1, dim * 2 ** i, 24 // 2 ** i, 16 // 2 ** i)
        assert semantic_maps[name].shape == (1, 150, 24 // 2 ** i, 16 // 2 ** i)


# ------------------------------------------------------------------------------------------------
# semantic branch and loss


def test_fuse_semantic_maps_on_linear_ramps():
    # Bilinear resizing with align_corners=True reproduces a function that is linear in the
    # corner-aligned coordinates exactly, so the fused map has a closed form.
    def ramp(h, w, a, b):
        y = torch.linspace(0, 1, h)[:, None]
        x = torch.linspace(0, 1, w)[None, :]
        return (a * y + b * x)[None, None].double()

    sizes = [(6, 5), (3, 3), (2, 2), (1, 1)]
    coefficients = [(1.0, 2.0), (-3.0, 0.5), (0.25, 4.0), (0.0, 0.0)]
    maps = [ramp(h, w, a, b) for (h, w), (a, b) in zip(sizes, coefficients)]
    maps[3] = maps[3] + 7.0  # a constant coarsest map
    fused = fuse_semantic_maps(maps, [4, 8, 16, 32])
    a = sum(c[0] for c in coefficients)
    b = sum(c[1] for c in coefficients)
    expected = ramp(24, 20, a, b) + 7.0
    torch.testing.assert_close(fused, expected)


def tiny_semask_cfg():
    cfg = config(TINY_CONFIG)
    cfg.MODEL.META_ARCHITECTURE = "SeMaskMaskFormer"
    cfg.MODEL.BACKBONE.NAME = "D2SeMaskSwinTransformer"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "BranchMaskFormerHead"
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.SWIN.SEM_WINDOW_SIZE = 4
    cfg.DATASETS.TRAIN = ("semask_test_unregistered",)
    return cfg


def _batch(num_classes=7):
    generator = torch.Generator().manual_seed(0)
    batch = []
    for size in [(64, 64), (48, 60)]:
        image = torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8)
        sem_seg = torch.randint(0, num_classes, size, generator=generator)
        sem_seg[:5] = 255
        instances = Instances(size)
        classes = sem_seg.unique()
        classes = classes[classes != 255]
        instances.gt_classes = classes
        instances.gt_masks = torch.stack([sem_seg == c for c in classes])
        batch.append({"image": image, "sem_seg": sem_seg, "instances": instances})
    return batch


def test_training_adds_semantic_prior_loss_on_final_prediction_only():
    cfg = tiny_semask_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = _batch()

    torch.manual_seed(1)
    losses = model(batch)

    # Independent assembly of loss_cate: the backbone's maps (same dropout draws: the backbone is
    # the first to draw after the seed), fused, against the padded semantic ground truth.
    images = model.preprocess_image(batch)
    torch.manual_seed(1)
    _, semantic_maps = model.backbone(images.tensor)
    fused = fuse_semantic_maps([semantic_maps[k] for k in ["res2", "res3", "res4", "res5"]], [4, 8, 16, 32])
    gt = torch.full((2, 64, 64), 255, dtype=torch.long)
    for i, x in enumerate(batch):
        gt[i, : x["sem_seg"].shape[0], : x["sem_seg"].shape[1]] = x["sem_seg"]
    expected = F.cross_entropy(fused, gt, ignore_index=255) * cfg.MODEL.MASK_FORMER.CATE_WEIGHT
    torch.testing.assert_close(losses["loss_cate"], expected)

    assert [k for k in losses if "cate" in k] == ["loss_cate"]
    expected_keys = {"loss_ce", "loss_mask", "loss_dice"}
    expected_keys |= {f"{k}_{i}" for k in ["loss_ce", "loss_mask", "loss_dice"] for i in range(3)}
    assert set(losses) == expected_keys | {"loss_cate"}

    sum(losses.values()).backward()
    semantic_params = [p for n, p in model.backbone.named_parameters() if "semantic_layer" in n]
    assert semantic_params and all(p.grad is not None for p in semantic_params)


def test_training_requires_semantic_ground_truth():
    model = build_model(tiny_semask_cfg()).train()
    batch = _batch()
    del batch[1]["sem_seg"]
    with pytest.raises(KeyError, match="sem_seg"):
        model(batch)


def test_inference_does_not_use_the_semantic_branch():
    model = build_model(tiny_semask_cfg()).eval()
    batch = _batch()
    calls = []
    model.sem_seg_head.register_forward_hook(lambda module, inputs, output: calls.append(output[1]))
    with torch.no_grad():
        results = model([{"image": x["image"]} for x in batch])
    assert calls == [None]
    assert results[0]["sem_seg"].shape == (7, 64, 64) and results[1]["sem_seg"].shape == (7, 48, 60)


def test_non_semask_backbone_is_rejected():
    cfg = tiny_semask_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    with pytest.raises(ValueError, match="D2SeMaskSwinTransformer"):
        build_model(cfg)
