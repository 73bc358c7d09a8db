"""Exact resume: an interrupted run continued with --resume reproduces the uninterrupted one bit
for bit (data stream position, random generators, optimizer and schedule all in the checkpoint);
checkpoints are written atomically; an unreadable last checkpoint is reported with a way out."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: I001  isort: skip

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from mask2former.data.train_loader import ResumableTrainLoader
from mask2former.utils.checkpoint import Mask2FormerCheckpointer, UnreadableCheckpointError

from test_train_net import REPO_ROOT, SYNTHETIC_CONFIGS, TINY, make_args, tiny_data  # noqa: F401  (fixture)


# ---------------------------------------------------------------------------------------------
# The loader alone: mixed aspect ratios keep items waiting in the buckets across batches.
# ---------------------------------------------------------------------------------------------
def _random_mapper(d):
    # Draws from the three global generators, as augmentations do.
    return {**d, "draws": (random.random(), float(np.random.rand()), float(torch.rand(1)))}


DICTS = [{"id": i, "width": 10 if i % 3 else 5, "height": 8} for i in range(7)]


def _batches(loader, n):
    iterator = iter(loader)
    return [[(d["id"], d["draws"]) for d in next(iterator)] for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_after_k_batches_continues_the_same_stream(workers):
    straight = _batches(ResumableTrainLoader(DICTS, _random_mapper, 3, num_workers=workers, seed=5), 9)
    # Every item comes back in the stream, the items of a batch share an aspect ratio.
    assert all(len({d[0] % 3 == 0 for d in batch}) == 1 for batch in straight)

    first = ResumableTrainLoader(DICTS, _random_mapper, 3, num_workers=workers, seed=5)
    head = _batches(first, 4)
    state = first.state_dict()
    assert any(state["buckets"]), "no item waits in a bucket: the case is not exercised"
    resumed = ResumableTrainLoader(DICTS, _random_mapper, 3, num_workers=workers, seed=123)
    resumed.load_state_dict(state)
    assert head + _batches(resumed, 5) == straight


def test_loader_data_do_not_depend_on_workers_and_leave_the_callers_generators_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    in_process = _batches(ResumableTrainLoader(DICTS, _random_mapper, 2, num_workers=0, seed=1), 6)
    assert torch.equal(torch.rand(3), expected)
    assert _batches(ResumableTrainLoader(DICTS, _random_mapper, 2, num_workers=2, seed=1), 6) == in_process
    assert _batches(ResumableTrainLoader(DICTS, _random_mapper, 2, num_workers=0, seed=2), 6) != in_process


# ---------------------------------------------------------------------------------------------
# Training: straight vs interrupted + resumed.
# ---------------------------------------------------------------------------------------------
SCHEDULE = ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "4", "DATASETS.TEST", "()", "SEED", "0"]


def _weights(output_dir):
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=True)["model"]


def _assert_bit_identical(a, b):
    assert list(a) == list(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} entries differ, e.g. {different[:3]}"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resumed_training_is_bit_identical_to_the_uninterrupted_one(tiny_data, tmp_path, workers):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    opts = [*SCHEDULE, "DATALOADER.NUM_WORKERS", workers]
    train_net.main(make_args("semantic", straight, tiny_data, *opts))
    # The state of a run interrupted after its iteration-4 checkpoint: that file only.
    resumed.mkdir()
    shutil.copy(straight / "model_0000003.pth", resumed / "model_0000003.pth")
    (resumed / "last_checkpoint").write_text("model_0000003.pth")
    train_net.main(make_args("semantic", resumed, tiny_data, *opts, flags=["--resume"]))
    _assert_bit_identical(_weights(straight), _weights(resumed))
