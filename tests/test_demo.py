"""demo/demo.py writes one drawing per input image, with a panel per output the config enables."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: I001  isort: skip

import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from demo import demo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml")
SMALL = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An untrained model's checkpoint: the demo's job is drawing, not the model's quality."""
    out_dir = tmp_path_factory.mktemp("weights")
    cfg = train_net.load_config(CONFIG, SMALL)
    train_net.use_cpu_without_cuda(cfg)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(out_dir)).save("model")
    return str(out_dir / "model.pth")


def _write_image(path, height, width):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_demo_draws_every_enabled_output(weights, tmp_path):
    _write_image(tmp_path / "a.jpg", 96, 128)
    _write_image(tmp_path / "b.png", 80, 64)
    out_dir = tmp_path / "vis"
    demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "*.*"), "--output", str(out_dir),
               "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", weights, *SMALL])

    gap = 4  # demo.predictor.tile_horizontally's default
    for name, (height, width) in {"a": (96, 128), "b": (80, 64)}.items():
        drawing = np.asarray(Image.open(out_dir / f"{name}.png"))
        # panoptic | instance | semantic, each at the input's size.
        assert drawing.shape == (height, 3 * width + 2 * gap, 3)
        assert (drawing[:, width : width + gap] == 255).all()


def test_demo_reports_a_missing_input(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "nothing_here*.jpg"),
                   "--output", str(tmp_path / "vis"), "--opts", "MODEL.WEIGHTS", weights])
