"""tools/submitit_train.py maps a SLURM job onto train_net's multi-machine flags and resumes when
requeued (no SLURM here: the job environment is given by hand)."""
import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

submitit = pytest.importorskip("submitit")
import submitit_train  # noqa: E402


def test_flags_from_the_job_environment():
    env = SimpleNamespace(num_nodes=3, num_tasks=3, node=2, hostnames=["gpu-17", "gpu-18", "gpu-21"])
    assert submitit_train.distributed_flags(env, 29511) == (3, 2, "tcp://gpu-17:29511")


def test_several_tasks_per_node_are_refused():
    env = SimpleNamespace(num_nodes=2, num_tasks=16, node=0, hostnames=["a", "b"])
    with pytest.raises(ValueError, match="one SLURM task per node"):
        submitit_train.distributed_flags(env, 29500)


def test_requeued_job_resumes_with_the_same_arguments():
    args = submitit_train.get_parser().parse_args(
        ["--nodes", "2", "--num-gpus", "8", "--config-file", "c.yaml", "OUTPUT_DIR", "out"]
    )
    assert not args.resume
    again = submitit_train.TrainingJob(args).checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    resumed = again.function.args
    assert resumed.resume and resumed.num_gpus == 8 and resumed.opts == ["OUTPUT_DIR", "out"]
    assert not args.resume  # the original job's arguments are left alone
