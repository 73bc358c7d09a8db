"""The onnxruntime runner (mask2former.export.OnnxPredictor) gives the PyTorch model's results:
identical panoptic segments and instance counts, semantic scores within fp32 tolerance, on
several image sizes; and demo/demo.py --onnx draws them."""
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from PIL import Image

from mask2former.engine import load_config
from mask2former.export import OnnxPredictor, export_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/synthetic/panoptic-segmentation/maskformer2_R18_bs8_cpu.yaml")
# Untrained class scores are nearly uniform: thresholds 0 keep the queries, so that panoptic and
# instance results are not trivially empty. MIN_SIZE_TEST 96 keeps the images small.
OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "200",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    cfg = load_config(CONFIG, OPTS)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Sharper class logits than an untrained model's, so that queries win their pixels clearly.
    with torch.no_grad():
        model.sem_seg_head.predictor.class_embed.weight.mul_(20)
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    onnx_path = export_model(model, "onnx", str(out), 96, 128, dynamic=True, log=lambda s: None)["path"]
    cfg = load_config(CONFIG, OPTS + ["MODEL.WEIGHTS", str(out / "model.pth")])
    return cfg, onnx_path


def image_of(height, width, seed):
    rng = np.random.default_rng(seed)
    # Smooth blobs rather than noise: larger, clearer segments.
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


@pytest.mark.slow
@pytest.mark.parametrize("size", [(96, 128), (120, 90), (77, 150)])
def test_runner_gives_the_pytorch_results(exported, size):
    cfg, onnx_path = exported
    image = image_of(*size, seed=size[0])
    expected = DefaultPredictor(cfg)(image)
    got = OnnxPredictor(cfg, onnx_path, threads=2)(image)

    assert set(got) == set(expected) == {"sem_seg", "panoptic_seg", "instances"}
    assert got["sem_seg"].shape == expected["sem_seg"].shape == (8, *size)
    # Scores are sums of products of probabilities (<= 1 each): absolute fp32 tolerance.
    assert (got["sem_seg"] - expected["sem_seg"]).abs().max() < 1e-4
    seg, info = got["panoptic_seg"]
    expected_seg, expected_info = expected["panoptic_seg"]
    assert len(expected_info) > 0
    assert info == expected_info
    assert torch.equal(seg, expected_seg)
    assert len(got["instances"]) == len(expected["instances"]) > 0
    assert torch.equal(got["instances"].pred_classes.sort()[0], expected["instances"].pred_classes.sort()[0])


def test_runner_refuses_an_image_of_another_size_for_a_static_export(exported, tmp_path):
    cfg, _ = exported
    model = build_model(cfg).eval()
    path = export_model(model, "onnx", str(tmp_path), 96, 128, log=lambda s: None)["path"]
    predictor = OnnxPredictor(cfg, path)
    with pytest.raises(ValueError, match="exported for 96x128.*--dynamic"):
        predictor(image_of(120, 90, seed=0))


def test_runner_reports_a_missing_file(exported, tmp_path):
    cfg, _ = exported
    with pytest.raises(FileNotFoundError, match="nothing.onnx"):
        OnnxPredictor(cfg, str(tmp_path / "nothing.onnx"))


def test_demo_runs_the_onnx_file(exported, tmp_path):
    from demo import demo

    cfg, onnx_path = exported
    Image.fromarray(image_of(96, 128, seed=3)).save(tmp_path / "a.png")
    demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "vis.png"),
               "--onnx", onnx_path, "--opts", *OPTS, "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS])
    drawing = np.asarray(Image.open(tmp_path / "vis.png"))
    assert drawing.shape == (96, 3 * 128 + 2 * 4, 3)  # panoptic | instance | semantic
