"""tools/convert-vit-adapter-mmdet-to-d2.py and tools/convert-beitv2-to-d2.py on checkpoints laid out
like the sources: the original detector's full key lists with meta tensors (names and shapes of the
Large model, no memory), and small random checkpoints (values, strict loading, the command lines)."""
import importlib.util
import os
import pickle
import sys

import numpy as np
import pytest
import torch

import train_net  # noqa: F401,I001  isort: skip  (applies the Detectron2 compatibility layer)
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from mask2former.engine.setup import load_config

from golden_keys import read_key_list

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
LARGE_CONFIG = os.path.join(
    REPO, "configs/coco/panoptic-segmentation/vit_adapter/maskformer2_beitv2_adapter_large_16x1_3x.yaml"
)
TINY_CONFIG = os.path.join(REPO, "configs/synthetic/panoptic-segmentation/maskformer2_vit_adapter_tiny_bs8_cpu.yaml")
sys.path.insert(0, TOOLS)
import vit_adapter_checkpoints as conv  # noqa: E402


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), os.path.join(TOOLS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def meta_state(list_name, prefix=""):
    entries, _ = read_key_list(list_name)
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {
        prefix + key: torch.empty(eval(shape), dtype=dtypes[dtype], device="meta") for key, shape, dtype in entries
    }


@pytest.fixture(scope="module")
def large():
    return conv.build_meta_model(LARGE_CONFIG)


# Hand-written from the two implementations' module structures: one entry per kind of parameter.
EXPECTED_NAMES = {
    "backbone.blocks.5.attn.relative_position_bias_table": "backbone.blocks.5.attn.relative_position_bias_table",
    "panoptic_head.pixel_decoder.input_convs.2.conv.weight": "sem_seg_head.pixel_decoder.input_proj.2.0.weight",
    "panoptic_head.pixel_decoder.input_convs.0.gn.bias": "sem_seg_head.pixel_decoder.input_proj.0.1.bias",
    "panoptic_head.pixel_decoder.encoder.layers.3.attentions.0.sampling_offsets.weight":
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.3.self_attn.sampling_offsets.weight",
    "panoptic_head.pixel_decoder.encoder.layers.5.ffns.0.layers.0.0.bias":
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.linear1.bias",
    "panoptic_head.pixel_decoder.encoder.layers.0.ffns.0.layers.1.weight":
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear2.weight",
    "panoptic_head.pixel_decoder.encoder.layers.1.norms.0.weight":
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.norm1.weight",
    "panoptic_head.pixel_decoder.encoder.layers.1.norms.1.bias":
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.norm2.bias",
    "panoptic_head.pixel_decoder.level_encoding.weight": "sem_seg_head.pixel_decoder.transformer.level_embed",
    "panoptic_head.pixel_decoder.lateral_convs.0.conv.weight": "sem_seg_head.pixel_decoder.adapter_1.weight",
    "panoptic_head.pixel_decoder.lateral_convs.0.gn.weight": "sem_seg_head.pixel_decoder.adapter_1.norm.weight",
    "panoptic_head.pixel_decoder.output_convs.0.conv.weight": "sem_seg_head.pixel_decoder.layer_1.weight",
    "panoptic_head.pixel_decoder.output_convs.0.gn.bias": "sem_seg_head.pixel_decoder.layer_1.norm.bias",
    "panoptic_head.pixel_decoder.mask_feature.bias": "sem_seg_head.pixel_decoder.mask_features.bias",
    "panoptic_head.transformer_decoder.layers.4.attentions.0.attn.in_proj_weight":
        "sem_seg_head.predictor.transformer_cross_attention_layers.4.multihead_attn.in_proj_weight",
    "panoptic_head.transformer_decoder.layers.4.attentions.1.attn.out_proj.bias":
        "sem_seg_head.predictor.transformer_self_attention_layers.4.self_attn.out_proj.bias",
    "panoptic_head.transformer_decoder.layers.8.ffns.0.layers.0.0.weight":
        "sem_seg_head.predictor.transformer_ffn_layers.8.linear1.weight",
    "panoptic_head.transformer_decoder.layers.8.ffns.0.layers.1.bias":
        "sem_seg_head.predictor.transformer_ffn_layers.8.linear2.bias",
    "panoptic_head.transformer_decoder.layers.2.norms.0.weight":
        "sem_seg_head.predictor.transformer_cross_attention_layers.2.norm.weight",
    "panoptic_head.transformer_decoder.layers.2.norms.1.weight":
        "sem_seg_head.predictor.transformer_self_attention_layers.2.norm.weight",
    "panoptic_head.transformer_decoder.layers.2.norms.2.bias": "sem_seg_head.predictor.transformer_ffn_layers.2.norm.bias",
    "panoptic_head.transformer_decoder.post_norm.weight": "sem_seg_head.predictor.decoder_norm.weight",
    "panoptic_head.query_embed.weight": "sem_seg_head.predictor.query_embed.weight",
    "panoptic_head.query_feat.weight": "sem_seg_head.predictor.query_feat.weight",
    "panoptic_head.level_embed.weight": "sem_seg_head.predictor.level_embed.weight",
    "panoptic_head.cls_embed.bias": "sem_seg_head.predictor.class_embed.bias",
    "panoptic_head.mask_embed.0.weight": "sem_seg_head.predictor.mask_embed.layers.0.weight",
    "panoptic_head.mask_embed.2.bias": "sem_seg_head.predictor.mask_embed.layers.1.bias",
    "panoptic_head.mask_embed.4.weight": "sem_seg_head.predictor.mask_embed.layers.2.weight",
}  # fmt: skip


def test_name_rules_by_hand():
    for mmdet, ours in EXPECTED_NAMES.items():
        assert conv.mmdet_name_to_d2(mmdet) == ours
    assert conv.mmdet_name_to_d2("panoptic_head.mask_embed.1.weight") is None  # a ReLU has none
    assert conv.mmdet_name_to_d2("panoptic_head.something_else.weight") is None


def test_the_original_detector_maps_onto_our_large_model_name_for_name_and_shape(large):
    _, model = large
    source = {**meta_state("vit_adapter_large_backbone", "backbone."), **meta_state("vit_adapter_large_mmdet_panoptic_head")}
    assert len(source) == 649 + 292
    converted = conv.convert_mmdet(source, class_perm=list(range(133)), log=lambda m: None)
    conv.check_layout(converted, model)  # every model entry, no extra one, same shapes
    assert len(converted) == len(model.state_dict()) == 942
    assert converted["criterion.empty_weight"].shape == (134,)


# MMDetection 2.x CocoPanopticDataset.THING_CLASSES + STUFF_CLASSES, in its label order.
MMDET_COCO_PANOPTIC_CLASSES = (
    "person bicycle car motorcycle airplane bus train truck boat|traffic light|fire hydrant|stop sign|"
    "parking meter|bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard|sports ball|kite|baseball bat|baseball glove|skateboard surfboard|"
    "tennis racket|bottle|wine glass|cup fork knife spoon bowl banana apple sandwich orange broccoli carrot|"
    "hot dog|pizza donut cake chair couch|potted plant|bed|dining table|toilet tv laptop mouse remote keyboard|"
    "cell phone|microwave oven toaster sink refrigerator book clock vase scissors|teddy bear|hair drier|"
    "toothbrush banner blanket bridge cardboard counter curtain door-stuff floor-wood flower fruit gravel house "
    "light mirror-stuff net pillow platform playingfield railroad river road roof sand sea shelf snow stairs "
    "tent towel wall-brick wall-stone wall-tile wall-wood water-other window-blind window-other tree-merged "
    "fence-merged ceiling-merged sky-other-merged cabinet-merged table-merged floor-other-merged "
    "pavement-merged mountain-merged grass-merged dirt-merged paper-merged food-other-merged "
    "building-other-merged rock-merged wall-other-merged rug-merged"
)


def _mmdet_class_names():
    names = []
    for chunk in MMDET_COCO_PANOPTIC_CLASSES.split("|"):
        # multi-word names are their own chunk; other chunks are space-separated single words
        names += [chunk] if chunk in {
            "traffic light", "fire hydrant", "stop sign", "parking meter", "sports ball", "baseball bat",
            "baseball glove", "tennis racket", "wine glass", "hot dog", "potted plant", "dining table",
            "cell phone", "teddy bear", "hair drier",
        } else chunk.split()  # fmt: skip
    return names


def test_coco_panoptic_class_order_is_mmdetections():
    names = _mmdet_class_names()
    assert len(names) == 133
    metadata = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert list(metadata.stuff_classes) == names
    assert conv.class_permutation(metadata.stuff_dataset_id_to_contiguous_id) == list(range(133))


def test_class_rows_are_permuted_with_no_object_last():
    source = {"panoptic_head.cls_embed.weight": torch.arange(4.0)[:, None].repeat(1, 2), "panoptic_head.cls_embed.bias": torch.arange(4.0)}
    out = conv.convert_mmdet(source, class_perm=[2, 0, 1], no_object_weight=0.25, log=lambda m: None)
    assert out["sem_seg_head.predictor.class_embed.bias"].tolist() == [2.0, 0.0, 1.0, 3.0]
    assert out["criterion.empty_weight"].tolist() == [1.0, 1.0, 1.0, 0.25]


def tiny_model():
    cfg = load_config(TINY_CONFIG, ["MODEL.DEVICE", "cpu"])
    return cfg, build_model(cfg)


def tiny_mmdet_checkpoint(model):
    """Random values under MMDetection's names for the tiny model: the Large model's names with the
    tiny model's layer counts, shapes read from the tiny model through the converter's rules."""
    ours = model.state_dict()
    names = list(meta_state("vit_adapter_large_mmdet_panoptic_head"))
    names = [n for n in names if conv.mmdet_name_to_d2(n) in ours]
    names += ["backbone." + k[len("backbone."):] for k in ours if k.startswith("backbone.")]
    generator = torch.Generator().manual_seed(0)
    source = {}
    for name in names:
        target = ours[conv.mmdet_name_to_d2(name)]
        if target.dtype.is_floating_point:
            source[name] = torch.randn(target.shape, generator=generator)
        else:
            source[name] = target.clone()
    return source


def test_tiny_checkpoint_converts_and_loads_strictly_with_its_values(tmp_path, capsys):
    cfg, model = tiny_model()
    source = tiny_mmdet_checkpoint(model)
    # The layer counts of the tiny model: 2 encoder layers, 3 decoder layers.
    assert "panoptic_head.pixel_decoder.encoder.layers.1.norms.1.bias" in source
    assert "panoptic_head.pixel_decoder.encoder.layers.2.norms.1.bias" not in source
    # With EMA copies as MMDetection's hook writes them (ema_ + name with dots as underscores).
    for name, value in list(source.items()):
        source["ema_" + name.replace(".", "_")] = value + 1 if value.dtype.is_floating_point else value.clone()
    path = tmp_path / "mmdet.pth"
    torch.save({"meta": {}, "state_dict": source}, path)
    tool = load_tool("convert-vit-adapter-mmdet-to-d2.py")
    # The tiny dataset is not COCO: keep the class order (no permutation) by converting in-process.
    converted = conv.convert_mmdet(source, no_object_weight=0.1, log=lambda m: None)
    model.load_state_dict(converted, strict=True)
    for mmdet, ours in EXPECTED_NAMES.items():
        if mmdet in source:
            assert torch.equal(model.state_dict()[ours], source[mmdet])
    assert torch.equal(
        model.state_dict()["sem_seg_head.predictor.class_embed.weight"], source["panoptic_head.cls_embed.weight"]
    )
    ema = conv.convert_mmdet(source, use_ema=True, log=lambda m: None)
    torch.testing.assert_close(
        ema["backbone.blocks.0.attn.qkv.weight"], source["backbone.blocks.0.attn.qkv.weight"] + 1
    )
    assert torch.equal(ema["backbone.norm1.num_batches_tracked"], source["backbone.norm1.num_batches_tracked"])
    # A checkpoint of another size: the Large config refuses it, naming the first mismatches.
    assert tool.main([str(path), str(tmp_path / "out.pkl"), "--quiet", "--keep-class-order"]) == 1
    assert "does not fit the configured model" in capsys.readouterr().err
    assert not (tmp_path / "out.pkl").exists()


def test_command_line_refuses_unmapped_entries_and_other_layouts(tmp_path, capsys, large):
    _, model = large
    source = {k: v for k, v in conv.convert_mmdet(
        {**meta_state("vit_adapter_large_backbone", "backbone."), **meta_state("vit_adapter_large_mmdet_panoptic_head")},
        log=lambda m: None,
    ).items()}  # fmt: skip
    with pytest.raises(conv.ConversionError, match="panoptic_head.extra.weight"):
        conv.convert_mmdet({"panoptic_head.extra.weight": torch.zeros(1)}, log=lambda m: None)
    small = dict(source)
    small["backbone.blocks.0.attn.qkv.weight"] = torch.empty(2304, 768, device="meta")
    with pytest.raises(conv.ConversionError, match=r"backbone.blocks.0.attn.qkv.weight: checkpoint \(2304, 768\), model \(3072, 1024\)"):
        conv.check_layout(small, model)
    fewer = {k: v for k, v in source.items() if not k.startswith("backbone.interactions.3.extra_extractors")}
    with pytest.raises(conv.ConversionError, match="missing, first: \\['backbone.interactions.3.extra_extractors.0"):
        conv.check_layout(fewer, model)


# ---------------------------------------------------------------------------------------------
# BEiTv2 ImageNet weights
# ---------------------------------------------------------------------------------------------
def beit_checkpoint(depth=4, dim=16, heads=2, pretrain_window=3, seed=0, device="cpu"):
    """Names and shapes of a BEiT(v2) ImageNet checkpoint (unilm's layout, with a class token)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g)

    tokens = pretrain_window**2 + 1
    state = {"cls_token": rand(1, 1, dim), "patch_embed.proj.weight": rand(dim, 3, 16, 16), "patch_embed.proj.bias": rand(dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        state.update({
            p + "gamma_1": rand(dim), p + "gamma_2": rand(dim),
            p + "norm1.weight": rand(dim), p + "norm1.bias": rand(dim),
            p + "attn.q_bias": rand(dim), p + "attn.v_bias": rand(dim),
            p + "attn.relative_position_bias_table": torch.randn((2 * pretrain_window - 1) ** 2 + 3, heads, generator=g),
            p + "attn.relative_position_index": torch.zeros(tokens, tokens, dtype=torch.int64),
            p + "attn.qkv.weight": rand(3 * dim, dim),
            p + "attn.proj.weight": rand(dim, dim), p + "attn.proj.bias": rand(dim),
            p + "norm2.weight": rand(dim), p + "norm2.bias": rand(dim),
            p + "mlp.fc1.weight": rand(4 * dim, dim), p + "mlp.fc1.bias": rand(4 * dim),
            p + "mlp.fc2.weight": rand(dim, 4 * dim), p + "mlp.fc2.bias": rand(dim),
        })  # fmt: skip
    state.update({"fc_norm.weight": rand(dim), "fc_norm.bias": rand(dim), "head.weight": rand(21841, dim), "head.bias": rand(21841)})
    return state


def test_large_beitv2_checkpoint_maps_onto_the_backbone(large):
    _, model = large
    source = beit_checkpoint(depth=24, dim=1024, heads=16, pretrain_window=14, device="meta")
    converted = conv.convert_beit(source, [14, 14, 14, 14, 14, 56] * 4, log=lambda m: None)
    conv.check_layout(converted, model, prefix="backbone.", require_all=False)
    vit = {k for k in model.state_dict() if k.startswith(("backbone.patch_embed", "backbone.blocks"))}
    assert set(converted) == vit - {k for k in vit if k.endswith("relative_position_index")}
    assert converted["backbone.blocks.5.attn.relative_position_bias_table"].shape == (111 * 111, 16)
    torch.testing.assert_close(
        converted["backbone.blocks.4.attn.relative_position_bias_table"],
        source["blocks.4.attn.relative_position_bias_table"][:729],
    )


def geometric_positions(src_side, dst_side):
    """Independent: the ratio q solving 1 + q + ... + q^(n-1) = dst_side // 2 (n = src_side // 2) by
    numpy's polynomial roots, and the positions 1, 1 + q, 1 + q + q^2, ... mirrored around 0."""
    n, target = src_side // 2, dst_side // 2
    coefficients = [1.0] * n
    coefficients[-1] -= target  # q^(n-1) + ... + q + (1 - target) = 0
    roots = np.roots(coefficients)
    q = max(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0)
    positive = np.cumsum([q**i for i in range(n)])
    return np.concatenate([-positive[::-1], [0.0], positive])


def test_relative_position_tables_are_resampled_on_the_geometric_grid():
    src_window, dst_window, heads = 14, 56, 2
    src_side, dst_side = 2 * src_window - 1, 2 * dst_window - 1
    positions = geometric_positions(src_side, dst_side)
    # A function the bicubic interpolating spline reproduces exactly: a polynomial of degree <= 3 in
    # each coordinate, so the resampled table is the function at the integer target offsets.
    def f(dy, dx, head):
        return (head + 1) * (0.01 * dy * dx + 0.3 * dy - 0.2 * dx + 1e-4 * dx**3)

    dy, dx = np.meshgrid(positions, positions, indexing="ij")
    table = torch.tensor(np.stack([f(dy, dx, h).reshape(-1) for h in range(heads)], 1), dtype=torch.float32)
    table = torch.cat([table, torch.full((3, heads), 99.0)])  # class-token rows
    resized = conv.resize_relative_position_table(table, dst_window)
    half = dst_side // 2
    ty, tx = np.meshgrid(np.arange(-half, half + 1.0), np.arange(-half, half + 1.0), indexing="ij")
    expected = torch.tensor(np.stack([f(ty, tx, h).reshape(-1) for h in range(heads)], 1), dtype=torch.float32)
    torch.testing.assert_close(resized, expected, atol=1e-2, rtol=1e-3)
    # The centre row (offset 0, 0) keeps its value.
    assert resized[half * dst_side + half].tolist() == pytest.approx(table[(src_side // 2) * src_side + src_side // 2].tolist(), abs=1e-4)


def test_beit_command_line_converts_for_the_tiny_backbone_and_refuses_unknown_entries(tmp_path, capsys):
    cfg, model = tiny_model()
    source = beit_checkpoint(depth=4, dim=64, heads=2, pretrain_window=4)
    torch.save({"model": source}, tmp_path / "beit.pth")
    tool = load_tool("convert-beitv2-to-d2.py")
    assert tool.main([str(tmp_path / "beit.pth"), str(tmp_path / "beit.pkl"), "--config-file", TINY_CONFIG]) == 0
    with open(tmp_path / "beit.pkl", "rb") as f:
        converted = pickle.load(f)["model"]
    assert torch.equal(converted["backbone.blocks.2.mlp.fc1.weight"], source["blocks.2.mlp.fc1.weight"])
    # Windows 4, 8, 4, 8: the pre-training window 4 is kept (minus the class rows), 8 is resampled.
    assert converted["backbone.blocks.0.attn.relative_position_bias_table"].shape == (49, 2)
    assert converted["backbone.blocks.1.attn.relative_position_bias_table"].shape == (225, 2)
    incompatible = model.load_state_dict(converted, strict=False)
    assert not incompatible.unexpected_keys
    missing_vit = [k for k in incompatible.missing_keys if k.startswith(("backbone.blocks", "backbone.patch_embed"))]
    assert missing_vit and all(k.endswith("relative_position_index") for k in missing_vit)  # recomputed
    out = capsys.readouterr().out
    assert "dropped head.weight" in out and "dropped cls_token" in out
    # Unknown entries and other widths are refused, nothing is written.
    torch.save({"model": {**source, "decoder.weight": torch.zeros(2)}}, tmp_path / "bad.pth")
    assert tool.main([str(tmp_path / "bad.pth"), str(tmp_path / "bad.pkl"), "--config-file", TINY_CONFIG]) == 1
    assert "decoder.weight" in capsys.readouterr().err
    wide = beit_checkpoint(depth=4, dim=32, heads=2, pretrain_window=4)
    torch.save(wide, tmp_path / "wide.pth")
    assert tool.main([str(tmp_path / "wide.pth"), str(tmp_path / "wide.pkl"), "--config-file", TINY_CONFIG]) == 1
    assert "patch_embed.proj.weight: checkpoint (32, 3, 16, 16), model (64, 3, 16, 16)" in capsys.readouterr().err
    assert not (tmp_path / "bad.pkl").exists() and not (tmp_path / "wide.pkl").exists()


def test_mmdet_command_line_on_the_tiny_layout(tmp_path, capsys):
    cfg, model = tiny_model()
    source = tiny_mmdet_checkpoint(model)
    torch.save({"meta": {}, "state_dict": source}, tmp_path / "tiny.pth")
    tool = load_tool("convert-vit-adapter-mmdet-to-d2.py")
    args = [str(tmp_path / "tiny.pth"), str(tmp_path / "tiny.pkl"), "--config-file", TINY_CONFIG]
    # The synthetic dataset's categories are not COCO's: the class-order check refuses it ...
    assert tool.main(args) == 1 and "133 COCO panoptic categories" in capsys.readouterr().err
    # ... unless the checkpoint's classes are declared to be in the dataset's order already.
    assert tool.main(args + ["--keep-class-order"]) == 0
    assert "Ignored" not in capsys.readouterr().out  # no ema_* entries here
    with open(tmp_path / "tiny.pkl", "rb") as f:
        model.load_state_dict(pickle.load(f)["model"], strict=True)
    torch.testing.assert_close(
        model.state_dict()["sem_seg_head.predictor.mask_embed.layers.2.bias"], source["panoptic_head.mask_embed.4.bias"]
    )
