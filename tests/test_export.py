"""Export (tools/export_model.py, mask2former/export/exporter.py): tiny variants of the COCO panoptic
R50 and Swin configs in each format, loaded back and compared with the PyTorch model on an input
size other than the export's (dynamic formats) by the test itself; bad input."""
import importlib.util
import os

import pytest
import torch
from detectron2.modeling import build_model

from mask2former.engine import load_config
from mask2former.export import ExportError, export_model
from mask2former.export import exporter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50 = os.path.join(REPO, "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
SWIN = os.path.join(REPO, "configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml")
SYNTHETIC = os.path.join(REPO, "configs/synthetic/panoptic-segmentation/maskformer2_R18_bs8_cpu.yaml")
# Narrow heads, 1 encoder and 1 decoder layer: the structure is the full model's, the cost is not.
TINY_HEAD = [
    "MODEL.WEIGHTS", "",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64", "MODEL.SEM_SEG_HEAD.MASK_DIM", "64",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
]
TINY_SWIN = ["MODEL.SWIN.EMBED_DIM", "24", "MODEL.SWIN.DEPTHS", "[2, 2, 2, 2]"]
# (config, overrides, export size, second size for dynamic exports). At 128x128 every Swin stage
# pads its map to whole 7x7 windows (32 -> 35, ..., 4 -> 7): the padded, shifted-window case.
CASES = {
    "r50": (R50, TINY_HEAD, (128, 128), (96, 160)),
    "swin": (SWIN, TINY_HEAD + TINY_SWIN, (128, 128), None),
}


def tiny_model(name):
    config, opts, _, _ = CASES[name]
    cfg = load_config(config, opts + ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def load_exported(fmt, path):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {"image": x.numpy()})]
    if fmt == "torchscript":
        module = torch.jit.load(path)
        return lambda x: module(x)
    module = torch.export.load(path).module()
    return lambda x: module(x)


def pytorch_outputs(model, image):
    """Independent of the export wrapper: the model's own preprocessing on a padded-size image."""
    with torch.no_grad():
        images = model.preprocess_image([{"image": image[0]}])
        outputs = model.head_outputs(images.tensor)
    return outputs["pred_logits"], outputs["pred_masks"]


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("r50", "onnx"),
        ("r50", "torchscript"),
        ("r50", "exported_program"),
        ("swin", "onnx"),
        ("swin", "torchscript"),
        ("swin", "exported_program"),
    ],
)
@pytest.mark.slow
def test_export_matches_pytorch(name, fmt, tmp_path):
    model = tiny_model(name)
    height, width = CASES[name][2]
    # Dynamic sizes: ONNX with a ResNet backbone (check_exportable refuses the other cases).
    dynamic = fmt == "onnx" and name == "r50"
    result = export_model(model, fmt, str(tmp_path), height, width, dynamic=dynamic, log=lambda s: None)
    assert os.listdir(tmp_path) == [exporter.FORMATS[fmt]]
    run = load_exported(fmt, result["path"])
    sizes = [CASES[name][2]] + ([CASES[name][3]] if dynamic else [])
    g = torch.Generator().manual_seed(1)
    for h, w in sizes:
        image = torch.randint(0, 256, (1, 3, h, w), generator=g).float()
        expected = pytorch_outputs(model, image)
        got = run(image)
        assert got[0].shape == (1, 10, 134)
        assert got[1].shape == (1, 10, h // 4, w // 4)
        for e, o in zip(expected, got):
            # fp32 reordering only (see exporter.RELATIVE_TOLERANCE); measured ~5e-6.
            assert (e - o).abs().max() <= 1e-4 * max(1.0, e.abs().max()), (h, w)


@pytest.fixture(scope="module")
def synthetic_model():
    cfg = load_config(SYNTHETIC, ["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
                                  "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("fmt, message", [("torchscript", "torchscript.*trace"), ("exported_program", "specialises")])
def test_dynamic_formats_are_refused_before_writing(synthetic_model, tmp_path, fmt, message):
    with pytest.raises(ExportError, match=message):
        export_model(synthetic_model, fmt, str(tmp_path / "out"), 64, 64, dynamic=True)
    assert not (tmp_path / "out").exists()


def test_dynamic_swin_is_refused_naming_the_backbone(tmp_path):
    with pytest.raises(ExportError, match="D2SwinTransformer.*padding"):
        export_model(tiny_model("swin"), "onnx", str(tmp_path / "out"), 128, 128, dynamic=True)
    assert not (tmp_path / "out").exists()


def test_natten_attention_is_refused_naming_the_module(synthetic_model, tmp_path):
    block = synthetic_model.backbone.res2[0]
    block.implementation = "natten"  # what a DiNAT block set to natten's kernels carries
    try:
        with pytest.raises(ExportError, match=r"backbone\.res2\.0 .*natten"):
            export_model(synthetic_model, "onnx", str(tmp_path / "out"), 64, 64)
    finally:
        del block.implementation
    assert not (tmp_path / "out").exists()


def test_size_not_a_multiple_of_the_divisibility(synthetic_model, tmp_path):
    with pytest.raises(ExportError, match="--height 100.*32"):
        export_model(synthetic_model, "torchscript", str(tmp_path), 100, 64)
    assert os.listdir(tmp_path) == []


def test_failed_check_leaves_no_file(synthetic_model, tmp_path, monkeypatch):
    # A negative tolerance, which no result meets, makes the comparison fail after the file was
    # written under its temporary name: neither it nor the final name may remain.
    monkeypatch.setattr(exporter, "RELATIVE_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="above the tolerance"):
        export_model(synthetic_model, "torchscript", str(tmp_path), 64, 64, log=lambda s: None)
    assert os.listdir(tmp_path) == []


def test_tool_reports_unexportable_config_before_loading(tmp_path):
    spec = importlib.util.spec_from_file_location("export_model_tool", os.path.join(REPO, "tools", "export_model.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    with pytest.raises(SystemExit, match="cannot export .*torchscript"):
        tool.main(["--config-file", SYNTHETIC, "--format", "torchscript", "--output", str(tmp_path / "o"),
                   "--dynamic", "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    assert not (tmp_path / "o").exists()
