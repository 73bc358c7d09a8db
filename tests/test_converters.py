"""tools/convert-*-to-d2.py on synthetic checkpoints laid out like the source formats, loaded
into the Detectron2 backbones with the project's checkpointer."""
import importlib.util
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.projects.deeplab import add_deeplab_config

from mask2former import add_maskformer2_config
from mask2former.modeling.backbone.dinat import DiNAT
from mask2former.modeling.backbone.swin import SwinTransformer
from mask2former.utils.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")


@pytest.fixture
def tool(monkeypatch):
    monkeypatch.syspath_prepend(TOOLS)

    def load(name):
        spec = importlib.util.spec_from_file_location(name.replace("-", "_"), os.path.join(TOOLS, name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


class WithBackbone(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def _cfg():
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    return cfg


def _classifier(dim, num_classes=10):
    return {"norm.weight": torch.randn(dim), "norm.bias": torch.randn(dim),
            "head.weight": torch.randn(num_classes, dim), "head.bias": torch.randn(num_classes)}


DINAT_ARGS = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), kernel_size=3,
                  dilations=((2,), (1, 2), (1,), (1,)), mlp_ratio=2.0)


@pytest.mark.parametrize("wrapped", [False, True])
def test_dinat_converter(tool, tmp_path, wrapped):
    torch.manual_seed(0)
    # An ImageNet DiNAT checkpoint: the classification model's state dict (levels, final norm,
    # head), saved plain (torch.hub files) or under "model".
    classifier = DiNAT(**DINAT_ARGS, out_indices=())
    source = dict(classifier.state_dict(), **_classifier(128))
    torch.save({"model": source} if wrapped else source, tmp_path / "dinat.pth")

    converter = tool("convert-pretrained-dinat-model-to-d2.py")
    assert converter.run(["convert", str(tmp_path / "dinat.pth"), str(tmp_path / "dinat.pkl")],
                         converter.convert, "third_party", "") == 0
    with open(tmp_path / "dinat.pkl", "rb") as f:
        converted = pickle.load(f)
    assert converted["__author__"] == "third_party" and converted["matching_heuristics"] is True

    torch.manual_seed(1)
    model = WithBackbone(DiNAT(**DINAT_ARGS))
    report = load_checkpoint(model, str(tmp_path / "dinat.pkl"))
    assert report.kind == "backbone"
    model_state = model.state_dict()
    for name, value in classifier.state_dict().items():
        torch.testing.assert_close(model_state["backbone." + name], value, msg=name)
    # The detection model's per-stage norms are not in ImageNet weights.
    assert sorted(report.missing) == [f"backbone.norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]


def _swin_source():
    swin = SwinTransformer(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, out_indices=())
    # Official Swin checkpoints: {"model": ...} with the shifted-window masks as buffers too.
    source = dict(swin.state_dict(), **_classifier(128))
    source["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return swin, {"model": source}


def test_swin_converter_for_swin_and_semask(tool, tmp_path):
    torch.manual_seed(0)
    swin, source = _swin_source()
    torch.save(source, tmp_path / "swin.pth")
    converter = tool("convert-pretrained-swin-model-to-d2.py")
    assert converter.run(["convert", str(tmp_path / "swin.pth"), str(tmp_path / "swin.pkl")],
                         converter.convert, "third_party", "") == 0

    cfg = _cfg()
    cfg.MODEL.SWIN.EMBED_DIM = 16
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.SWIN.WINDOW_SIZE = 4
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    for backbone_name in ("D2SwinTransformer", "D2SeMaskSwinTransformer"):
        cfg.MODEL.BACKBONE.NAME = backbone_name
        torch.manual_seed(1)
        model = WithBackbone(build_backbone(cfg))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        report = load_checkpoint(model, str(tmp_path / "swin.pkl"))
        state = model.state_dict()
        for name, value in swin.state_dict().items():
            torch.testing.assert_close(state["backbone." + name], value, msg=f"{backbone_name}: {name}")
        semantic = [k for k in state if "semantic_layer" in k]
        assert bool(semantic) == (backbone_name == "D2SeMaskSwinTransformer")
        for name in semantic:  # not in ImageNet weights: keep their initialisation
            assert name in report.missing
            torch.testing.assert_close(state[name], before[name])


def test_torchvision_converter(tool, tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    # Non-trivial batch-norm statistics, so that a wrong mapping would show.
    for module in resnet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    converter = tool("convert-torchvision-to-d2.py")
    assert converter.convert_name("layer3.1.bn2.running_var") == "res4.1.conv2.norm.running_var"
    assert converter.convert_name("layer2.0.downsample.1.weight") == "res3.0.shortcut.norm.weight"
    assert converter.convert_name("bn1.bias") == "stem.conv1.norm.bias"
    assert converter.run(["convert", str(tmp_path / "resnet18.pth"), str(tmp_path / "R-18.pkl")],
                         converter.convert, "torchvision", "") == 0

    cfg = _cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    model = WithBackbone(build_resnet_backbone(cfg, ShapeSpec(channels=3)))
    load_checkpoint(model, str(tmp_path / "R-18.pkl"))
    # Same features as torchvision's network up to its classifier (eval-mode batch norm).
    resnet.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        y = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(y))))
        torch.testing.assert_close(model.backbone(x)["res5"], y, rtol=1e-4, atol=1e-4)


def test_command_line_and_errors(tool, tmp_path):
    script = os.path.join(TOOLS, "convert-pretrained-dinat-model-to-d2.py")
    missing = subprocess.run([sys.executable, script, str(tmp_path / "nope.pth"), str(tmp_path / "out.pkl")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "Checkpoint not found" in missing.stderr
    conversion = tool("checkpoint_conversion.py")
    assert conversion.run(["convert-x.py", "only-one-argument"], None, "third_party", "") == 2
    torch.save({"model": {"a": torch.zeros(1), "epoch": 3}}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="non-tensor entries: \\['epoch'\\]"):
        conversion.load_state_dict(str(tmp_path / "mixed.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a dict"):
        conversion.load_state_dict(str(tmp_path / "list.pth"))


def test_checkpoint_holding_more_than_tensors_needs_the_trust_flag(tool, tmp_path):
    import argparse

    conversion = tool("checkpoint_conversion.py")
    path = str(tmp_path / "with_args.pth")
    torch.save({"model": {"a": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"with_args\.pth.*--trust-file"):
        conversion.load_state_dict(path)
    assert torch.equal(conversion.load_state_dict(path, trusted=True)["a"], torch.ones(2))
    out = str(tmp_path / "out.pkl")
    assert conversion.run(["convert-x.py", path, out, "--trust-file"], lambda sd: sd, "third_party", "") == 0
    with open(out, "rb") as f:
        assert torch.equal(pickle.load(f)["model"]["a"], torch.ones(2))
