"""D2DiNAT: variants, checkpoint layout (golden key lists), configs, forward on small maps."""
import glob
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.projects.deeplab import add_deeplab_config

from mask2former import add_maskformer2_config
from mask2former.modeling.backbone.dinat import DINAT_VARIANTS, D2DiNAT, DiNAT

from golden_keys import read_key_list, state_dict_entries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DINAT_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*", "*", "dinat", "*.yaml")))


def config(path=None):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    if path:
        cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_meta_model(cfg):
    """The model's structure only (parameters on the meta device: no memory, no init time)."""
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def test_configs_exist_at_upstream_paths():
    expected = [
        "ade20k/instance-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml",
        "ade20k/panoptic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml",
        "ade20k/semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml",
        "cityscapes/instance-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_90k.yaml",
        "cityscapes/panoptic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_90k.yaml",
        "cityscapes/semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_90k.yaml",
        "coco/instance-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_100ep.yaml",
        "coco/panoptic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_100ep.yaml",
    ]
    assert [os.path.relpath(p, os.path.join(REPO, "configs")) for p in DINAT_CONFIGS] == expected


@pytest.mark.parametrize("path", DINAT_CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_builds(path):
    cfg = config(path)
    assert cfg.MODEL.BACKBONE.NAME == "D2DiNAT" and cfg.SOLVER.AMP.ENABLED is False
    model = build_meta_model(cfg)
    blocks = [b for level in model.backbone.levels for b in level.blocks]
    assert [b.attn.dilation for b in blocks] == [d for stage in cfg.MODEL.DINAT.DILATIONS for d in stage]
    assert all(b.attn.kernel_size == 11 for b in blocks)


@pytest.mark.parametrize(
    "config_path,key_list",
    [
        ("configs/coco/panoptic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_100ep.yaml",
         "dinat_large_coco_panoptic.txt"),
        ("configs/ade20k/semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml",
         "dinat_large_ade20k_semantic.txt"),
    ],
)
def test_full_model_state_dict_matches_published_keys(config_path, key_list):
    model = build_meta_model(config(os.path.join(REPO, config_path)))
    expected, total = read_key_list(key_list)
    assert state_dict_entries(model) == expected
    assert sum(p.numel() for p in model.parameters()) == total


def test_large_backbone_parameters():
    with torch.device("meta"):
        backbone = DiNAT(**DINAT_VARIANTS["large"])
    expected, _ = read_key_list("dinat_large_coco_panoptic.txt")
    expected = [e for e in expected if e[0].startswith("backbone.")]
    assert state_dict_entries(backbone, "backbone.") == expected
    for name, param in backbone.named_parameters():
        if name.endswith("attn.rpb"):
            heads = param.shape[0]
            assert tuple(param.shape) == (heads, 21, 21), name


@pytest.mark.parametrize("variant", sorted(DINAT_VARIANTS))
def test_variant_structure(variant):
    spec = DINAT_VARIANTS[variant]
    with torch.device("meta"):
        model = DiNAT(**spec)
    embed_dim, heads, kernel_size = spec["embed_dim"], spec["num_heads"], spec["kernel_size"]
    assert [len(level.blocks) for level in model.levels] == list(spec["depths"])
    for i, level in enumerate(model.levels):
        for block, dilation in zip(level.blocks, spec["dilations"][i]):
            assert tuple(block.attn.rpb.shape) == (heads[i], 2 * kernel_size - 1, 2 * kernel_size - 1)
            assert block.attn.dilation == dilation
            assert block.mlp.fc1.out_features == int(embed_dim * 2 ** i * spec["mlp_ratio"])
            assert hasattr(block, "gamma1") == ("layer_scale" in spec)


@pytest.mark.parametrize("variant", sorted(DINAT_VARIANTS))
def test_variant_runs_on_small_maps(variant):
    # The variant's widths, heads, kernel, MLP ratio and largest dilations, with at most two
    # blocks per stage to keep the test fast.
    spec = DINAT_VARIANTS[variant]
    dilations = tuple((stage[0], max(stage)) if len(stage) > 1 else stage for stage in spec["dilations"])
    spec = dict(spec, depths=tuple(len(d) for d in dilations), dilations=dilations)
    torch.manual_seed(0)
    model = DiNAT(**spec).eval()
    # 96x64 input: every stage is smaller than kernel * dilation, so the small-map padding is used.
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 64))
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        assert out[name].shape == (1, spec["embed_dim"] * 2 ** i, 24 // 2 ** i, 16 // 2 ** i)
        assert torch.isfinite(out[name]).all()


def test_d2_backbone_interface_and_errors():
    cfg = config()
    cfg.MODEL.BACKBONE.NAME = "D2DiNAT"
    cfg.MODEL.DINAT.EMBED_DIM = 32
    cfg.MODEL.DINAT.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.DINAT.NUM_HEADS = [1, 2, 4, 8]
    cfg.MODEL.DINAT.KERNEL_SIZE = 3
    cfg.MODEL.DINAT.OUT_FEATURES = ["res3", "res5"]
    backbone = build_backbone(cfg)
    assert isinstance(backbone, D2DiNAT) and backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {"res3": (64, 8), "res5": (256, 32)}
    out = backbone(torch.randn(2, 3, 64, 96))
    assert sorted(out) == ["res3", "res5"] and out["res5"].shape == (2, 256, 2, 3)

    cfg.MODEL.DINAT.DILATIONS = [[1], [1, 2], [1], [1]]
    with pytest.raises(ValueError, match="DILATIONS"):
        build_backbone(cfg)
    cfg.MODEL.DINAT.DILATIONS = None
    cfg.MODEL.DINAT.OUT_FEATURES = ["res6"]
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="N, C, H, W"):
        backbone(torch.randn(3, 64, 64))


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = DiNAT(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), kernel_size=3,
                  dilations=((2,), (1, 3), (1,), (1,)), mlp_ratio=2.0, drop_path_rate=0.0, layer_scale=0.5)
    out = model(torch.randn(1, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
