"""tools/run_video_example.py end to end, shrunk: training, YouTube-VIS evaluation, results.json,
animation and loss curve (the real run, with its learning goal, is scripts/run_video_example.sh)."""
import json
import os
import sys

import mask2former  # noqa: F401  isort: skip

from PIL import Image

from mask2former_video.data_video.datasets.synthetic_vis import generate, register_synthetic_vis

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import run_video_example  # noqa: E402

TINY_MODEL = [
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
]


def test_run_video_example_writes_results_animation_and_loss_curve(tmp_path):
    root = str(tmp_path / "synthetic_vis")
    generate(root, splits={"train": 3, "valid": 2}, length=4)
    register_synthetic_vis(root=root, prefix="ci_vis")
    out = str(tmp_path / "example")
    summary = run_video_example.main([
        "--output-dir", out, "--num-vis", "2", "--num-threads", "2", *TINY_MODEL,
        "DATASETS.TRAIN", "('ci_vis_train',)", "DATASETS.TEST", "('ci_vis_val',)",
    ])
    assert summary["iterations"] == 3
    assert set(summary["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10"}
    assert 0.0 <= summary["metrics"]["AP"] <= 100.0
    with open(os.path.join(out, "inference", "results.json")) as f:
        predictions = json.load(f)
    # 16 queries x 4 classes; the model keeps its top 10 (query, class) pairs per video.
    assert {p["video_id"] for p in predictions} == {4, 5}
    assert all(len(p["segmentations"]) == 4 and p["category_id"] in (1, 2, 3, 4) for p in predictions)
    with Image.open(os.path.join(out, "tracks.gif")) as gif:
        assert gif.n_frames == 4
        # Two videos, each 2x the 96-pixel frames, with a 4-pixel gap.
        assert gif.size[1] == 2 * 2 * 96 + 4
    assert os.path.getsize(os.path.join(out, "loss_curve.png")) > 0
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["metrics"]["AP"] == summary["metrics"]["AP"]
