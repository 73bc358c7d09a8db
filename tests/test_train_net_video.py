"""train_net_video.py end to end on a tiny synthetic video dataset registered through
DATASETS.CUSTOM (so that processes started by --num-gpus register it too): training then
evaluation, --eval-only reproducing a checkpoint's metrics, --resume, and two CPU processes."""
# train_net_video applies the Detectron2 compatibility layer before importing detectron2.
import train_net_video  # noqa: I001  isort: skip

import os

import pytest
from detectron2.engine import default_argument_parser

from mask2former.utils.launch import launch
from mask2former_video.data_video.datasets.synthetic_vis import generate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "youtubevis_synthetic", "video_maskformer2_R18_cpu.yaml")
TINY = [
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "128",
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vis") / "synthetic_vis")
    generate(root, splits={"train": 3, "valid": 2}, length=3)
    specs = [
        f"name=tnv_vis_{split},type=ytvis,json_file={root}/{folder}.json,image_root={root}/{folder}/JPEGImages"
        for split, folder in (("train", "train"), ("val", "valid"))
    ]
    return ["DATASETS.CUSTOM", str(specs), "DATASETS.TRAIN", "('tnv_vis_train',)", "DATASETS.TEST", "('tnv_vis_val',)"]


def make_args(output_dir, datasets, *opts, flags=()):
    return default_argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY, *datasets, "OUTPUT_DIR", str(output_dir), *opts]
    )


def test_train_evaluate_then_eval_only_reproduces(datasets, tmp_path):
    results = train_net_video.main(make_args(tmp_path / "train", datasets))
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10"} <= set(results["segm"])
    weights = str(tmp_path / "train" / "model_final.pth")
    evaluated = train_net_video.main(
        make_args(tmp_path / "eval", datasets, "MODEL.WEIGHTS", weights, flags=["--eval-only"])
    )
    for name, value in results["segm"].items():
        assert evaluated["segm"][name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
    assert os.path.isfile(tmp_path / "eval" / "inference" / "results.json")


def test_resume_continues_at_saved_iteration(datasets, tmp_path):
    schedule = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()"]
    train_net_video.main(make_args(tmp_path, datasets, *schedule))
    assert os.path.isfile(tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    trainer_iters = []
    original = train_net_video.Trainer.train

    def record_start(self):
        trainer_iters.append(self.start_iter)
        return original(self)

    train_net_video.Trainer.train = record_start
    try:
        train_net_video.main(make_args(tmp_path, datasets, *schedule, flags=["--resume"]))
    finally:
        train_net_video.Trainer.train = original
    assert trainer_iters == [2]


def test_test_time_augmentation_is_refused(datasets, tmp_path):
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED"):
        train_net_video.main(make_args(tmp_path, datasets, "TEST.AUG.ENABLED", "True", flags=["--eval-only"]))


# ~75 s on the shared 2-core machine; the GLOO route itself is the image trainer's, which
# tests/test_train_net.py checks in CI.
@pytest.mark.heavy
def test_two_cpu_processes(datasets, tmp_path):
    args = make_args(tmp_path, datasets, "DATASETS.TEST", "()", flags=["--num-gpus", "2"])
    launch(train_net_video.main, 2, dist_url="auto", args=(args,))
    assert os.path.isfile(tmp_path / "model_final.pth")
