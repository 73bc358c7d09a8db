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


def test_resumed_training_is_bit_identical_to_the_uninterrupted_one(tiny_data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    opts = [*SCHEDULE, "DATALOADER.NUM_WORKERS", "0"]
    train_net.main(make_args("semantic", straight, tiny_data, *opts))
    # The state of a run interrupted after its iteration-4 checkpoint: that file only.
    resumed.mkdir()
    shutil.copy(straight / "model_0000003.pth", resumed / "model_0000003.pth")
    (resumed / "last_checkpoint").write_text("model_0000003.pth")
    train_net.main(make_args("semantic", resumed, tiny_data, *opts, flags=["--resume"]))
    _assert_bit_identical(_weights(straight), _weights(resumed))


def _command(tiny_data, output_dir, *flags):
    args = make_args("semantic", output_dir, tiny_data, *SCHEDULE, "DATALOADER.NUM_WORKERS", "2", flags=flags)
    return [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", args.config_file,
            *flags, *args.opts]


@pytest.mark.slow
def test_kill_9_then_resume_with_workers_is_bit_identical(tiny_data, tmp_path):
    # Same number of threads as this process (the order of parallel sums depends on it).
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run(_command(tiny_data, straight), env=env, check=True, capture_output=True)

    run = subprocess.Popen(_command(tiny_data, interrupted), env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = interrupted / "last_checkpoint"
    while not (tag.exists() and tag.read_text() == "model_0000003.pth"):
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)  # the trainer and its data-loading workers
    run.wait()
    assert not (interrupted / "model_final.pth").exists()

    subprocess.run(_command(tiny_data, interrupted, "--resume"), env=env, check=True, capture_output=True)
    _assert_bit_identical(_weights(straight), _weights(interrupted))


# ---------------------------------------------------------------------------------------------
# Atomic checkpoints; unreadable last checkpoint.
# ---------------------------------------------------------------------------------------------
def _checkpointer(folder, seed=0):
    torch.manual_seed(seed)
    return Mask2FormerCheckpointer(nn.Linear(300, 300), str(folder))


def _crash_halfway(monkeypatch):
    """torch.save / the tag write that die after writing part of the file, as a kill would."""

    def partial_save(obj, f):
        f.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", partial_save)


def test_a_crash_while_saving_leaves_the_previous_checkpoints_valid(tmp_path, monkeypatch):
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000003")
    checkpointer.save("model_final")
    saved = {k: v.clone() for k, v in checkpointer.model.state_dict().items()}
    with torch.no_grad():
        checkpointer.model.weight.add_(1)

    with monkeypatch.context() as patch:
        _crash_halfway(patch)
        for name in ("model_0000007", "model_final"):  # a new file, and overwriting one
            with pytest.raises(KeyboardInterrupt):
                checkpointer.save(name)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000003.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    for name in ("model_0000003.pth", "model_final.pth"):
        state = torch.load(tmp_path / name, weights_only=True)["model"]
        assert all(torch.equal(state[k], saved[k]) for k in saved), name

    # The tag itself: a failure while writing it keeps the old one.
    with monkeypatch.context() as patch:
        real_replace = os.replace

        def fail_on_tag(src, dst):
            if dst.endswith("last_checkpoint"):
                raise KeyboardInterrupt("killed while tagging")
            real_replace(src, dst)

        patch.setattr(os, "replace", fail_on_tag)
        with pytest.raises(KeyboardInterrupt):
            checkpointer.save("model_0000011")
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_unreadable_last_checkpoint_is_named_and_the_previous_one_offered(tmp_path):
    _checkpointer(tmp_path).save("model_0000003")
    time.sleep(0.01)
    (tmp_path / "model_0000007.pth").write_bytes((tmp_path / "model_0000003.pth").read_bytes()[:1000])
    (tmp_path / "last_checkpoint").write_text("model_0000007.pth")
    with pytest.raises(UnreadableCheckpointError) as info:
        _checkpointer(tmp_path, seed=1).resume_or_load("", resume=True)
    message = str(info.value)
    assert f"{tmp_path / 'model_0000007.pth'} cannot be read" in message
    assert "newest first: model_0000003.pth." in message
    assert f"echo model_0000003.pth > {tmp_path / 'last_checkpoint'}" in message and "--resume" in message

    # Following the advice resumes from the previous checkpoint.
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    resumed = _checkpointer(tmp_path, seed=1)
    resumed.resume_or_load("", resume=True)
    assert torch.equal(resumed.model.weight, _checkpointer(tmp_path, seed=0).model.weight)

    # A last_checkpoint naming no file (e.g. empty) is reported too.
    (tmp_path / "last_checkpoint").write_text("")
    with pytest.raises(UnreadableCheckpointError, match=r"last_checkpoint names '\.', which is not a checkpoint"):
        _checkpointer(tmp_path).resume_or_load("", resume=True)
