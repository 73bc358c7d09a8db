"""tools/run_example.py end to end, shrunk: dataset generation, training, evaluation, visualisations,
loss curve and results file (the real run, with its learning goal, is scripts/run_example.sh)."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: F401,I001  isort: skip

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from test_train_net import TINY, tiny_data  # noqa: F401  (tiny_data is a fixture)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import run_example  # noqa: E402


@pytest.mark.slow
def test_run_example_writes_metrics_visualisations_and_loss_curve(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    out = tmp_path / "example"
    report = run_example.main([
        "--output-dir", str(out), "--num-threads", "1", "--num-vis", "2",
        "DATASETS.CUSTOM", repr(tiny_data["specs"]),
        "DATASETS.TRAIN", "('tiny_panoptic_train',)",
        "DATASETS.TEST", "('tiny_panoptic_val',)",
        *TINY,
    ])

    # Step 1 generated the built-in dataset where DETECTRON2_DATASETS points.
    assert os.path.isfile(tmp_path / "datasets" / "synthetic" / "synthetic_dataset.json")
    for name in ("PQ", "SQ", "RQ", "AP", "mIoU"):
        assert name in report["metrics"]
    with open(out / "results.json") as f:
        assert json.load(f)["metrics"] == pytest.approx(report["metrics"], nan_ok=True)
    assert report["iterations"] == 3 and report["training_minutes"] > 0

    drawings = sorted(os.listdir(out / "predictions"))
    assert len(drawings) == 2
    drawing = np.asarray(Image.open(out / "predictions" / drawings[0]))
    # input | ground truth | panoptic | instance | semantic, each twice the 128x160 image.
    scale, gap = run_example.VIS_SCALE, 4
    assert drawing.shape == (128 * scale, 5 * 160 * scale + 4 * gap, 3)
    curve = np.asarray(Image.open(out / "loss_curve.png"))
    assert curve.ndim == 3 and curve.shape[0] > 100 and curve.shape[1] > 100
