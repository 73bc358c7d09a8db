"""End-to-end tests of train_net.py: training + evaluation for the three tasks, resuming, evaluating
a checkpoint, multi-process training on the CPU, and the errors for bad input.

Everything runs on a tiny copy of the synthetic dataset registered through DATASETS.CUSTOM (so that
processes started by `--num-gpus` register it too), with the synthetic example configs shrunk
further on the command line.
"""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: I001  isort: skip

import glob
import json
import math
import os
import shutil

import pytest
import torch
import yaml

from detectron2.engine import default_argument_parser

from mask2former.data.synthetic import SYNTHETIC_CATEGORIES, generate
from mask2former.utils.launch import launch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_CONFIGS = {
    task: os.path.join(REPO_ROOT, "configs", "synthetic", f"{task}-segmentation", "maskformer2_R18_bs8_cpu.yaml")
    for task in ("panoptic", "instance", "semantic")
}
# Smaller than the example: a couple of iterations on 64x80 images.
TINY = [
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.0003",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "80",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "80",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
]


# Made once per test session: the custom datasets are registered under fixed names, which must
# keep pointing to the same files (test_train_net_example.py uses the fixture too).
_TINY_DATA = {}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 6-image train / 3-image val synthetic dataset, and the DATASETS.CUSTOM specs for it."""
    if not _TINY_DATA:
        _TINY_DATA.update(_make_tiny_data(str(tmp_path_factory.mktemp("synthetic"))))
    return _TINY_DATA


def _make_tiny_data(root):
    generate(root, seed=0, splits={"train": 6, "val": 3})
    classes_file = os.path.join(root, "classes.yaml")
    with open(classes_file, "w") as f:
        yaml.safe_dump([c["name"] for c in SYNTHETIC_CATEGORIES], f)
    specs = []
    for split in ("train", "val"):
        specs += [
            f"name=tiny_panoptic_{split},type=coco_panoptic,"
            f"json_file={root}/annotations/panoptic_{split}.json,image_root={root}/{split},"
            f"panoptic_root={root}/panoptic_{split},sem_seg_root={root}/panoptic_semseg_{split},"
            f"instances_json={root}/annotations/instances_{split}.json",
            f"name=tiny_instance_{split},type=coco_instance,"
            f"json_file={root}/annotations/instances_{split}.json,image_root={root}/{split}",
            f"name=tiny_sem_seg_{split},type=sem_seg,image_root={root}/{split},"
            f"sem_seg_root={root}/panoptic_semseg_{split},classes={classes_file}",
        ]
    return {"root": root, "specs": specs}


DATASET_OF_TASK = {"panoptic": "tiny_panoptic", "instance": "tiny_instance", "semantic": "tiny_sem_seg"}


def make_args(task, output_dir, data, *extra, flags=()):
    dataset = DATASET_OF_TASK[task]
    opts = [
        "DATASETS.CUSTOM", repr(data["specs"]),
        "DATASETS.TRAIN", f"('{dataset}_train',)",
        "DATASETS.TEST", f"('{dataset}_val',)",
        "OUTPUT_DIR", str(output_dir),
        *TINY,
        *extra,
    ]
    return default_argument_parser().parse_args(["--config-file", SYNTHETIC_CONFIGS[task], *flags, *opts])


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if "total_loss" in line]


def train(args):
    """train_net.main's training branch, also returning the learning rate of every iteration."""
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    lrs = {iteration: lr for lr, iteration in trainer.storage.history("lr").values()}
    return results, lrs


def poly_lr(iteration, base_lr, max_iter, warmup_iters, warmup_factor, power=0.9):
    """WarmupPolyLR computed by hand: linear warm-up factor times (1 - it / max_iter) ** power."""
    warmup = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warmup = warmup_factor * (1 - alpha) + alpha
    return base_lr * warmup * (1 - iteration / max_iter) ** power


EXPECTED_METRICS = {
    "panoptic": {"panoptic_seg": ["PQ", "SQ", "RQ"], "segm": ["AP"], "sem_seg": ["mIoU"]},
    "instance": {"segm": ["AP"]},
    "semantic": {"sem_seg": ["mIoU", "fwIoU", "mACC", "pACC"]},
}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """Train + evaluate each task once: {task: (results, learning rate per iteration, output dir)}."""
    runs = {}

    def run(task):
        if task not in runs:
            output_dir = tmp_path_factory.mktemp(task)
            runs[task] = (*train(make_args(task, output_dir, tiny_data)), output_dir)
        return runs[task]

    return run


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_train_then_evaluate(task, trained):
    results, lrs, output_dir = trained(task)

    for group, names in EXPECTED_METRICS[task].items():
        for name in names:
            value = results[group][name]
            assert 0.0 <= value <= 100.0 or value != value, (group, name, value)  # AP may be NaN
    assert sorted(lrs) == [0, 1, 2]
    for iteration, lr in lrs.items():
        assert lr == pytest.approx(poly_lr(iteration, 3e-4, 3, 2, 0.01), rel=1e-6)
    # Detectron2's writers: metrics.json (and the console) every 20 iterations and at the end.
    (row,) = read_metrics(output_dir)
    assert row["iteration"] == 2 and row["lr"] == pytest.approx(lrs[2])
    for term in ("total_loss", "loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"):
        assert math.isfinite(row[term]), term
    assert os.path.isfile(output_dir / "model_final.pth")
    assert glob.glob(str(output_dir / "events.out.tfevents.*")), "no TensorBoard event file"


def test_resume_continues_at_saved_iteration_with_same_schedule(tiny_data, tmp_path):
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    schedule = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()"]
    _, first_lrs = train(make_args("semantic", first, tiny_data, *schedule))
    assert os.path.isfile(first / "model_0000001.pth")  # saved after iterations 0 and 1

    # A run interrupted after that checkpoint: its folder holds only the checkpoint.
    resumed.mkdir()
    shutil.copy(first / "model_0000001.pth", resumed / "model_0000001.pth")
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    _, resumed_lrs = train(make_args("semantic", resumed, tiny_data, *schedule, flags=["--resume"]))

    assert sorted(first_lrs) == [0, 1, 2, 3]
    assert sorted(resumed_lrs) == [2, 3]
    for iteration, lr in resumed_lrs.items():
        assert lr == pytest.approx(first_lrs[iteration], rel=1e-12)
        assert lr == pytest.approx(poly_lr(iteration, 3e-4, 4, 2, 0.01), rel=1e-6)


def test_eval_only_reproduces_the_metrics_of_a_checkpoint(trained, tiny_data, tmp_path):
    trained_results, _, train_dir = trained("panoptic")
    weights = str(train_dir / "model_final.pth")
    evaluated = train_net.main(
        make_args("panoptic", tmp_path / "eval", tiny_data, "MODEL.WEIGHTS", weights, flags=["--eval-only"])
    )
    assert set(evaluated) == set(trained_results)
    for group in trained_results:
        for name, value in trained_results[group].items():
            assert evaluated[group][name] == pytest.approx(value, abs=1e-6, nan_ok=True), (group, name)


def test_eval_only_with_test_time_augmentation(trained, tiny_data, tmp_path):
    # One scale (the test size) and no flip: the augmented evaluation must give the plain results,
    # reported a second time with the "_TTA" suffix.
    _, _, train_dir = trained("panoptic")
    args = make_args(
        "panoptic", tmp_path, tiny_data,
        "MODEL.WEIGHTS", str(train_dir / "model_final.pth"),
        "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "80",
        "TEST.AUG.FLIP", "False",
        flags=["--eval-only"],
    )
    results = train_net.main(args)
    plain = [group for group in results if not group.endswith("_TTA")]
    assert {"panoptic_seg", "segm", "sem_seg"} <= set(plain)
    assert sorted(results) == sorted(plain + [group + "_TTA" for group in plain])
    for group in plain:
        for name, value in results[group].items():
            assert results[group + "_TTA"][name] == pytest.approx(value, abs=1e-6, nan_ok=True), (group, name)
    assert os.path.isdir(tmp_path / "inference_TTA")


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the problem, raised before the output folder is even created.
# ---------------------------------------------------------------------------------------------
def _expect_error(args, error, match):
    with pytest.raises(error, match=match):
        train_net.main(args)
    assert not os.path.exists(args.opts[args.opts.index("OUTPUT_DIR") + 1])


def test_unknown_config_key_on_the_command_line(tiny_data, tmp_path):
    args = make_args("semantic", tmp_path / "out", tiny_data, "MODEL.MASK_FORMER.NOT_A_KEY", "1")
    _expect_error(args, KeyError, "MODEL.MASK_FORMER.NOT_A_KEY")


def test_unknown_config_key_in_a_file(tiny_data, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"_BASE_: {SYNTHETIC_CONFIGS['semantic']}\nSOLVER:\n  BASE_LRR: 0.1\n")
    args = make_args("semantic", tmp_path / "out", tiny_data)
    args.config_file = str(config)
    _expect_error(args, KeyError, r"bad\.yaml.*SOLVER\.BASE_LRR")


def test_missing_base_config(tiny_data, tmp_path):
    config = tmp_path / "child.yaml"
    config.write_text("_BASE_: Base-Missing.yaml\n")
    args = make_args("semantic", tmp_path / "out", tiny_data)
    args.config_file = str(config)
    _expect_error(args, FileNotFoundError, r"child\.yaml.*Base-Missing\.yaml")


def test_missing_config_file(tiny_data, tmp_path):
    args = make_args("semantic", tmp_path / "out", tiny_data)
    args.config_file = str(tmp_path / "nope.yaml")
    _expect_error(args, FileNotFoundError, r"nope\.yaml")


def test_unregistered_dataset(tiny_data, tmp_path):
    args = make_args("semantic", tmp_path / "out", tiny_data, "DATASETS.TRAIN", "('no_such_dataset_train',)")
    _expect_error(args, KeyError, "no_such_dataset_train")


def test_missing_weights_file(tiny_data, tmp_path):
    missing = str(tmp_path / "no_such_model.pth")
    args = make_args("semantic", tmp_path / "out", tiny_data, "MODEL.WEIGHTS", missing)
    _expect_error(args, FileNotFoundError, "no_such_model.pth")


def test_non_finite_loss_stops_training_naming_iteration_and_term(tiny_data, tmp_path):
    # An infinite "no object" weight makes the weighted cross-entropy inf/inf = NaN, while the
    # matching (which does not use that weight) and the mask losses stay finite.
    args = make_args("semantic", tmp_path, tiny_data, "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", "1e999")
    with pytest.raises(FloatingPointError, match=r"iteration 0: loss_ce=nan.*other terms: .*'loss_dice'"):
        train_net.main(args)
    assert not os.path.exists(tmp_path / "model_final.pth")


# ---------------------------------------------------------------------------------------------
# --num-gpus 2 on the CPU: gradients are averaged over the processes.
# ---------------------------------------------------------------------------------------------
_original_rand = torch.rand


def _same_points_for_every_mask(*size, generator=None, out=None, **kwargs):
    """torch.rand whose values depend only on the trailing dimensions.

    The point-sampled losses draw random points per batch, so a batch of 2 and two batches of 1
    sample different points. With every row equal, each mask gets the same points whichever way
    the batch is split, which makes one process and two processes compute the same gradient.
    """
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    row = _original_rand(size[1:], generator=torch.Generator().manual_seed(len(size)))
    return row.expand(size).clone().to(kwargs.get("device"), kwargs.get("dtype") or row.dtype)


def _one_step_worker(args, out_dir):
    """Runs in every process started by launch(): one training step, then saves the weights."""
    import detectron2.utils.comm as comm

    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # With one process, launch() runs this in the test process itself: restore torch.rand after.
    torch.rand = _same_points_for_every_mask
    try:
        trainer.train()
    finally:
        torch.rand = _original_rand
    torch.save(
        {"before": before, "after": model.state_dict()},
        os.path.join(out_dir, f"rank{comm.get_rank()}_of_{comm.get_world_size()}.pth"),
    )


def _two_images_with_equal_segment_counts(tiny_data, out_dir):
    """A 2-image panoptic training set whose images have as many segments each.

    The classification loss is a weighted mean over all queries of the batch; it splits exactly
    across processes only when each image has the same total weight, i.e. as many matched segments.
    """
    root = tiny_data["root"]
    with open(os.path.join(root, "annotations", "panoptic_train.json")) as f:
        panoptic = json.load(f)
    by_count = {}
    for annotation in panoptic["annotations"]:
        by_count.setdefault(len(annotation["segments_info"]), []).append(annotation)
    pair = next(group[:2] for group in by_count.values() if len(group) >= 2)
    ids = {a["image_id"] for a in pair}
    panoptic["annotations"] = pair
    panoptic["images"] = [image for image in panoptic["images"] if image["id"] in ids]
    json_file = os.path.join(out_dir, "pair.json")
    with open(json_file, "w") as f:
        json.dump(panoptic, f)
    return (
        f"name=pair_panoptic_train,type=coco_panoptic,json_file={json_file},image_root={root}/train,"
        f"panoptic_root={root}/panoptic_train"
    )


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_the_whole_batch(tiny_data, tmp_path):
    spec = _two_images_with_equal_segment_counts(tiny_data, tmp_path)
    opts = [
        "DATASETS.CUSTOM", repr([spec]),
        "DATASETS.TRAIN", "('pair_panoptic_train',)",
        "DATASETS.TEST", "()",
        *TINY,
        "SOLVER.MAX_ITER", "1",
        "SOLVER.OPTIMIZER", "SGD",
        "SOLVER.BASE_LR", "0.1",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
        "INPUT.RANDOM_FLIP", "none",
    ]
    results = {}
    for num_processes in (1, 2):
        out_dir = tmp_path / f"{num_processes}proc"
        out_dir.mkdir()
        args = default_argument_parser().parse_args(
            ["--config-file", SYNTHETIC_CONFIGS["panoptic"], "--num-gpus", str(num_processes),
             *opts, "OUTPUT_DIR", str(out_dir)]
        )
        launch(_one_step_worker, num_processes, dist_url="auto", args=(args, str(out_dir)))
        results[num_processes] = [
            torch.load(out_dir / f"rank{rank}_of_{num_processes}.pth", weights_only=True)
            for rank in range(num_processes)
        ]

    single = results[1][0]
    rank0, rank1 = results[2]
    trainable = [k for k, v in single["before"].items() if v.is_floating_point() and not torch.equal(v, single["after"][k])]
    assert len(trainable) > 100, "the step changed too few weights to compare"
    for name in trainable:
        # Same initial weights (rank 0's, broadcast), identical updates on both ranks.
        assert torch.equal(rank0["before"][name], single["before"][name]), name
        assert torch.equal(rank0["after"][name], rank1["after"][name]), name
    single_update = torch.cat([(single["after"][k] - single["before"][k]).flatten() for k in trainable])
    dist_update = torch.cat([(rank0["after"][k] - rank0["before"][k]).flatten() for k in trainable])
    relative_error = ((dist_update - single_update).norm() / single_update.norm()).item()
    assert relative_error < 1e-3, relative_error
