"""Multi-machine training through train_net.py's --num-machines / --machine-rank / --dist-url flags:
two launcher processes on this machine play two machines (one CPU worker each, GLOO over
127.0.0.1). They must train in lockstep, and when one is killed the other must stop with a clear
error instead of waiting for it."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from mask2former.data.synthetic import generate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml")
TINY = [
    "SOLVER.IMS_PER_BATCH", "2",  # one image per machine
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "80",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "DATASETS.TRAIN", "('two_machines_train',)",
    "DATASETS.TEST", "()",
]


@pytest.fixture(scope="module")
def dataset_spec(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("two_machines_data"))
    generate(root, seed=0, splits={"train": 4})
    return (
        f"name=two_machines_train,type=coco_panoptic,json_file={root}/annotations/panoptic_train.json,"
        f"image_root={root}/train,panoptic_root={root}/panoptic_train"
    )


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_machines(tmp_path, dataset_spec, max_iter, timeout_s=120):
    """Start the two "machines"; returns [(process, output dir, log file)] for ranks 0 and 1."""
    dist_url = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MASK2FORMER_DIST_TIMEOUT_S=str(timeout_s))
    machines = []
    for machine_rank in (0, 1):
        out_dir = tmp_path / f"machine{machine_rank}"
        out_dir.mkdir()
        log = tmp_path / f"machine{machine_rank}.log"
        command = [
            sys.executable, os.path.join(REPO_ROOT, "tests", "two_machine_main.py"),
            "--config-file", CONFIG,
            "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(machine_rank), "--dist-url", dist_url,
            "DATASETS.CUSTOM", repr([dataset_spec]), *TINY,
            "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(out_dir),
        ]
        with open(log, "w") as f:
            # Own session: the test can kill a launcher together with its worker.
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        machines.append((process, out_dir, log))
    return machines


def _stop(machines):
    for process, _, _ in machines:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_two_machines_train_in_lockstep(tmp_path, dataset_spec):
    machines = _start_machines(tmp_path, dataset_spec, max_iter=3)
    try:
        for process, _, log in machines:
            assert process.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        _stop(machines)
    # Rank 0 also saved its usual checkpoint, which must hold the same weights.
    checkpoint = torch.load(machines[0][1] / "model_final.pth", weights_only=False)["model"]
    weights = [torch.load(out_dir / f"weights_rank{rank}.pth", weights_only=True) for rank, (_, out_dir, _) in enumerate(machines)]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
        assert torch.equal(value, checkpoint[name]), name
    # Rank 1 logs to its own file: it really trained, as a second machine.
    assert (machines[1][1] / "log.txt.rank1").exists()


@pytest.mark.slow
def test_killing_one_machine_stops_the_other_with_a_clear_error(tmp_path, dataset_spec):
    machines = _start_machines(tmp_path, dataset_spec, max_iter=100000, timeout_s=60)
    log0 = machines[0][2]
    try:
        deadline = time.time() + 240
        while "Starting training" not in log0.read_text():
            assert time.time() < deadline and machines[0][0].poll() is None, log0.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # a few iterations in
        os.killpg(machines[1][0].pid, signal.SIGKILL)
        killed_at = time.time()
        returncode = machines[0][0].wait(timeout=180)
        waited = time.time() - killed_at
    finally:
        _stop(machines)
    log = log0.read_text()
    assert returncode != 0
    assert "lost contact with the other processes" in log, log[-3000:]
    assert "rank 0 of 2 (machine 0, worker 0" in log
    assert waited < 120, waited
