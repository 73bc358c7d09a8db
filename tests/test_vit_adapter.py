"""ViT-Adapter backbone (D2ViTAdapter): the Large model's state-dict names and shapes against the
original's key list (built on the meta device), its components against naive computations, bad
input, the recipe's layer-wise lr decay, weight EMA and DETR augmentation, and a few training
iterations of the tiny synthetic variant."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_net  # noqa: I001  isort: skip  (applies the Detectron2 compatibility layer)
from detectron2.data import transforms as T
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from mask2former.data.dataset_mappers.common import detr_augmentations
from mask2former.engine.ema import ModelEMA
from mask2former.engine.layer_decay import layer_id
from mask2former.engine.optimizer import build_optimizer
from mask2former.engine.setup import load_config
from mask2former.modeling.backbone.vit_adapter import (
    BEiTAttention,
    MultiScaleDWConv,
    ViTAdapter,
    reference_points,
)
from mask2former.modeling.pixel_decoder.ops.functions import ms_deform_attn_core_pytorch
from mask2former.modeling.pixel_decoder.ops.modules import MSDeformAttn

from golden_keys import read_key_list, state_dict_entries
from test_train_net import read_metrics, tiny_data, train  # noqa: F401  (tiny_data is a fixture)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LARGE_CONFIG = os.path.join(
    REPO_ROOT, "configs/coco/panoptic-segmentation/vit_adapter/maskformer2_beitv2_adapter_large_16x1_3x.yaml"
)
TINY_CONFIG = os.path.join(REPO_ROOT, "configs/synthetic/panoptic-segmentation/maskformer2_vit_adapter_tiny_bs8_cpu.yaml")


def meta_model(config_file, opts=()):
    cfg = load_config(config_file, list(opts))
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return cfg, build_model(cfg)


@pytest.fixture(scope="module")
def large():
    return meta_model(LARGE_CONFIG)


def test_large_backbone_state_dict_equals_the_original_key_list(large):
    _, model = large
    expected, total_params = read_key_list("vit_adapter_large_backbone")
    assert state_dict_entries(model.backbone) == expected
    assert sum(p.numel() for p in model.backbone.parameters()) == total_params == 327_380_032
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (1024, 4),
        "res3": (1024, 8),
        "res4": (1024, 16),
        "res5": (1024, 32),
    }


def test_large_config_is_the_original_recipe(large):
    cfg, model = large
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (16, 265500, (191750, 236000))
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == ("ADAMW", 1e-4, 0.05)
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.SOLVER.LAYER_DECAY.ENABLED and (cfg.SOLVER.LAYER_DECAY.RATE, cfg.SOLVER.LAYER_DECAY.NUM_LAYERS) == (0.9, 24)
    assert cfg.MODEL_EMA.ENABLED and cfg.MODEL_EMA.MOMENTUM == 1e-4
    assert cfg.MODEL.VIT_ADAPTER.DROP_PATH_RATE == 0.4
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    weights = (cfg.MODEL.MASK_FORMER.CLASS_WEIGHT, cfg.MODEL.MASK_FORMER.MASK_WEIGHT, cfg.MODEL.MASK_FORMER.DICE_WEIGHT)
    assert weights == (2.0, 5.0, 5.0) and cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT == 0.1
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32))
    # The head's key list of the original detector has one more entry here: criterion.empty_weight.
    head, head_params = read_key_list("vit_adapter_large_mmdet_panoptic_head")
    ours = [k for k in model.state_dict() if not k.startswith("backbone.")]
    assert len(ours) == len(head) + 1
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.")) == head_params


# ---------------------------------------------------------------------------------------------
# components against naive computations
# ---------------------------------------------------------------------------------------------
def naive_windowed_beit_attention(attn, x, H, W):
    """Loops over windows and token pairs; the bias of a pair is read from the table at its (dy, dx)."""
    size, heads = attn.window_size, attn.num_heads
    batch, _, channels = x.shape
    head_dim = channels // heads
    padded_h, padded_w = math.ceil(H / size) * size, math.ceil(W / size) * size
    grid = torch.zeros(batch, padded_h, padded_w, channels, dtype=x.dtype)
    grid[:, :H, :W] = x.view(batch, H, W, channels)
    q_bias = attn.q_bias
    v_bias = attn.v_bias
    wq, wk, wv = attn.qkv.weight.split(channels)
    out = torch.zeros_like(grid)
    for b in range(batch):
        for y0 in range(0, padded_h, size):
            for x0 in range(0, padded_w, size):
                cells = [(y0 + i, x0 + j) for i in range(size) for j in range(size)]
                tokens = torch.stack([grid[b, y, xx] for y, xx in cells])
                q = (tokens @ wq.T + q_bias).view(-1, heads, head_dim) * head_dim**-0.5
                k = (tokens @ wk.T).view(-1, heads, head_dim)
                v = (tokens @ wv.T + v_bias).view(-1, heads, head_dim)
                bias = torch.zeros(heads, len(cells), len(cells), dtype=x.dtype)
                for a, (ya, xa) in enumerate(cells):
                    for c, (yc, xc) in enumerate(cells):
                        row = (ya - yc + size - 1) * (2 * size - 1) + (xa - xc + size - 1)
                        bias[:, a, c] = attn.relative_position_bias_table[row]
                logits = torch.einsum("qhd,khd->hqk", q, k) + bias
                mixed = torch.einsum("hqk,khd->qhd", logits.softmax(-1), v).reshape(len(cells), channels)
                mixed = mixed @ attn.proj.weight.T + attn.proj.bias
                for a, (y, xx) in enumerate(cells):
                    out[b, y, xx] = mixed[a]
    return out[:, :H, :W].reshape(batch, H * W, channels)


@pytest.mark.parametrize("H,W", [(4, 6), (5, 3)])  # a whole number of windows, and padding
def test_windowed_attention_with_relative_position_bias_matches_naive_loops(H, W):
    torch.manual_seed(0)
    attn = BEiTAttention(dim=8, num_heads=2, window_size=2 if H == 4 else 4, qkv_bias=True).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
    x = torch.randn(2, H * W, 8, dtype=torch.float64)
    torch.testing.assert_close(attn(x, H, W), naive_windowed_beit_attention(attn, x, H, W))


def test_global_attention_needs_a_grid_of_one_window():
    attn = BEiTAttention(dim=8, num_heads=2, window_size=2, windowed=False)
    assert attn(torch.randn(1, 4, 8), 2, 2).shape == (1, 4, 8)
    with pytest.raises(ValueError, match="2x2 grid, got a 3x3"):
        attn(torch.randn(1, 9, 8), 3, 3)


def test_reference_points_are_cell_centres():
    points = reference_points([(2, 3), (1, 1)], "cpu")
    expected = [[x / 6, y / 4] for y in (1, 3) for x in (1, 3, 5)] + [[0.5, 0.5]]
    torch.testing.assert_close(points, torch.tensor(expected)[None, :, None, :])


def test_deformable_attention_with_value_ratio_matches_the_reference_path():
    """ratio 0.5: values of d_model/2 channels, split over the heads, sampled by the grid_sample
    reference, projected back to d_model."""
    torch.manual_seed(0)
    d_model, heads, levels, points = 16, 2, 2, 3
    attn = MSDeformAttn(d_model, levels, heads, points, ratio=0.5).double()
    assert attn.value_proj.weight.shape == (8, 16) and attn.output_proj.weight.shape == (16, 8)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(std=0.3)
    shapes = torch.tensor([[4, 5], [2, 3]])
    starts = torch.tensor([0, 20])
    query = torch.randn(2, 7, d_model, dtype=torch.float64)
    feat = torch.randn(2, 26, d_model, dtype=torch.float64)
    ref = torch.rand(2, 7, levels, 2, dtype=torch.float64)
    out = attn(query, ref, feat, shapes, starts)

    value = (feat @ attn.value_proj.weight.T + attn.value_proj.bias).view(2, 26, heads, 4)
    offsets = (query @ attn.sampling_offsets.weight.T + attn.sampling_offsets.bias).view(2, 7, heads, levels, points, 2)
    logits = (query @ attn.attention_weights.weight.T + attn.attention_weights.bias).view(2, 7, heads, levels * points)
    weights = logits.softmax(-1).view(2, 7, heads, levels, points)
    normaliser = torch.stack([shapes[:, 1], shapes[:, 0]], -1).double()
    locations = ref[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
    sampled = ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    torch.testing.assert_close(out, sampled @ attn.output_proj.weight.T + attn.output_proj.bias)


def test_multi_scale_depthwise_conv_treats_each_level_separately():
    torch.manual_seed(0)
    conv = MultiScaleDWConv(3).double()
    H, W = 2, 4
    maps = [torch.randn(1, 3, 2 * H, 2 * W), torch.randn(1, 3, H, W), torch.randn(1, 3, H // 2, W // 2)]
    maps = [m.double() for m in maps]
    tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
    expected = torch.cat([F.conv2d(m, conv.dwconv.weight, conv.dwconv.bias, padding=1, groups=3).flatten(2).transpose(1, 2) for m in maps], 1)
    torch.testing.assert_close(conv(tokens, H, W), expected)


def tiny_adapter(**kwargs):
    args = dict(
        embed_dim=32,
        depth=4,
        num_heads=2,
        window_size=[2, 4, 2, 4],
        conv_inplane=8,
        deform_num_heads=2,
        deform_ratio=0.5,
        interaction_indexes=[[0, 1], [2, 3]],
        norm="BN",
    )
    args.update(kwargs)
    return ViTAdapter(**args)


def test_outputs_strides_and_channels_and_the_old_version():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 96)
    new = tiny_adapter().eval()
    shapes = [tuple(f.shape) for f in new(x)]
    assert shapes == [(1, 32, 16, 24), (1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]
    old = tiny_adapter(version="old", interaction_indexes=[[0], [1], [2], [3]]).eval()
    old.load_state_dict(tiny_adapter(interaction_indexes=[[0], [1], [2], [3]]).state_dict())
    assert [tuple(f.shape) for f in old(x)] == shapes


def test_input_sizes_must_be_multiples_of_32():
    model = tiny_adapter().eval()
    with pytest.raises(ValueError, match="multiples of 32, got 64x80"):
        model(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="interaction_indexes"):
        tiny_adapter(interaction_indexes=[[0, 1], [3, 3]])
    with pytest.raises(ValueError, match="window_size has 3 entries"):
        tiny_adapter(window_size=[2, 2, 2])


def test_initialisation():
    torch.manual_seed(0)
    model = tiny_adapter(init_values=1e-6)
    assert torch.all(model.blocks[0].gamma_1 == 1e-6) and torch.all(model.interactions[0].injector.gamma == 1e-6)
    assert torch.count_nonzero(model.blocks[0].attn.relative_position_bias_table) == 0
    # The deformable attentions keep their own initialisation (zero offset weights, fixed fan of points).
    attn = model.interactions[0].injector.attn
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    torch.testing.assert_close(attn.sampling_offsets.bias.view(2, 3, 4, 2)[0, 0, :, 0], torch.arange(1.0, 5.0))


# ---------------------------------------------------------------------------------------------
# recipe: layer-wise lr decay, EMA, DETR augmentation
# ---------------------------------------------------------------------------------------------
def test_layer_ids():
    assert layer_id("backbone.patch_embed.proj.weight", 24) == 0
    assert layer_id("backbone.blocks.0.attn.qkv.weight", 24) == 1
    assert layer_id("backbone.blocks.23.mlp.fc2.bias", 24) == 24
    for name in ("backbone.level_embed", "backbone.spm.fc1.weight", "backbone.interactions.0.injector.gamma",
                 "backbone.norm1.weight", "sem_seg_head.predictor.query_feat.weight"):
        assert layer_id(name, 24) == 25


def test_optimizer_layer_decay_learning_rates_and_weight_decay():
    cfg = load_config(TINY_CONFIG, ["MODEL.DEVICE", "cpu", "SOLVER.BASE_LR", "0.001"])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())

    def hyper(name):
        group = groups[id(params[name])]
        return group["lr"], group["weight_decay"]

    rate, lr = 0.9, 0.001  # 4 blocks: patch embedding 0.9^5, block i 0.9^(4 - i), the rest 1
    assert hyper("backbone.patch_embed.proj.weight") == pytest.approx((lr * rate**5, 0.05))
    assert hyper("backbone.patch_embed.proj.bias") == pytest.approx((lr * rate**5, 0.0))
    assert hyper("backbone.blocks.0.attn.qkv.weight") == pytest.approx((lr * rate**4, 0.05))
    assert hyper("backbone.blocks.3.attn.relative_position_bias_table") == pytest.approx((lr * rate, 0.05))
    assert hyper("backbone.blocks.3.gamma_1") == pytest.approx((lr * rate, 0.0))
    assert hyper("backbone.blocks.1.norm1.weight") == pytest.approx((lr * rate**3, 0.0))
    assert hyper("backbone.level_embed") == pytest.approx((lr, 0.05))
    assert hyper("backbone.spm.stem.1.weight") == pytest.approx((lr, 0.0))
    assert hyper("sem_seg_head.predictor.query_feat.weight") == pytest.approx((lr, 0.05))
    assert hyper("sem_seg_head.predictor.class_embed.bias") == pytest.approx((lr, 0.0))
    # Off (the default): the existing rules, unchanged.
    cfg.defrost()
    cfg.SOLVER.LAYER_DECAY.ENABLED = False
    groups = {id(p): g for g in build_optimizer(cfg, model).param_groups for p in g["params"]}
    assert groups[id(params["backbone.blocks.3.attn.relative_position_bias_table"])]["weight_decay"] == 0.0


class _Trainer:
    iter = 0


def test_ema_follows_the_momentum_schedule_and_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, momentum=1e-4, warmup_iters=10)
    ema.trainer = _Trainer()
    ema.before_train()
    start = model[0].weight.detach().clone()
    expected = start.clone()
    for step in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        ema.trainer.iter = step
        ema.after_step()
        m = (1 - 1e-4) * math.exp(-(step + 1) / 10) + 1e-4
        expected = (1 - m) * expected + m * model[0].weight.detach()
    torch.testing.assert_close(ema.state_dict()["0.weight"], expected)
    assert "1.num_batches_tracked" not in ema.state_dict()  # integers are not averaged
    assert ema.ema_state_dict()["1.num_batches_tracked"].dtype == torch.int64
    other = ModelEMA(model)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.state_dict()["0.weight"], expected)
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({"0.weight": expected})


def test_detr_augmentation_takes_both_policies_and_ends_with_the_multi_scale_resize():
    cfg = load_config(LARGE_CONFIG)
    augmentations = detr_augmentations(cfg)
    assert isinstance(augmentations[0], T.RandomFlip)
    np.random.seed(0)
    image = np.zeros((480, 640, 3), dtype=np.uint8)  # 3:4
    cropped = 0
    for _ in range(40):
        out, _ = T.apply_transform_gens(augmentations, image)
        h, w = out.shape[:2]
        assert min(h, w) in range(480, 801, 32) and max(h, w) <= 1333
        if abs(w / h - 4 / 3) > 0.02:  # the random crop changed the aspect ratio
            cropped += 1
            # a 384..600 crop of a 400..600 short side image, resized: sides keep the crop's ratio
            assert 384 / 600 - 0.01 <= h / w <= 600 / 384 + 0.01
    assert 5 < cropped < 35


# ---------------------------------------------------------------------------------------------
# training the tiny variant
# ---------------------------------------------------------------------------------------------
def test_tiny_vit_adapter_trains_a_few_iterations_with_ema_in_the_checkpoint(tiny_data, tmp_path):
    opts = [
        "DATASETS.CUSTOM", repr(tiny_data["specs"]),
        "DATASETS.TRAIN", "('tiny_panoptic_train',)",
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path),
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "3",
        "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.CROP.SIZE", "(48, 64)",
        "INPUT.CROP.PRE_CROP_MIN_SIZES", "[64]",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
        "MODEL.MASK_FORMER.DEC_LAYERS", "2",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    ]  # fmt: skip
    args = default_argument_parser().parse_args(["--config-file", TINY_CONFIG, *opts])
    train(args)
    metrics = read_metrics(str(tmp_path))
    assert [m["iteration"] for m in metrics][-1] == 2
    assert all(math.isfinite(m["total_loss"]) for m in metrics)
    checkpoint = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=False)
    assert set(checkpoint["model_ema"]) == {
        k for k, v in checkpoint["model"].items() if v.dtype.is_floating_point
    }
    # After a few iterations with a fast warm-up the average differs from the live weights.
    name = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(checkpoint["model_ema"][name], checkpoint["model"][name])
