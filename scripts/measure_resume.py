"""Measures how far a resumed run is from an uninterrupted one (the figure of GETTING_STARTED.md).

    python scripts/measure_resume.py REPO NUM_WORKERS TOTAL_ITERATIONS WORK_DIR

Trains the tiny synthetic semantic config of tests/test_train_net.py TOTAL iterations straight,
then again killed with SIGKILL once its TOTAL/2 checkpoint is tagged and continued with --resume,
and prints the largest difference between the two final weights.
"""
import os
import signal
import subprocess
import sys
import time

import torch

repo = sys.argv[1]
workers = sys.argv[2]
total = int(sys.argv[3])
root = sys.argv[4]
sys.path[:0] = [repo, os.path.join(repo, "tests")]
os.chdir(repo)
import test_train_net as t  # noqa: E402

data_root = os.path.join(root, "data")
os.makedirs(data_root, exist_ok=True)
data = t._make_tiny_data(data_root)
half = total // 2
def cmd(out, *extra):
    return [sys.executable, "train_net.py", "--config-file", t.SYNTHETIC_CONFIGS["semantic"], *extra,
            "DATASETS.CUSTOM", repr(data["specs"]), "DATASETS.TRAIN", "('tiny_sem_seg_train',)", "DATASETS.TEST", "()",
            "OUTPUT_DIR", out, *t.TINY, "SOLVER.MAX_ITER", str(total), "SOLVER.CHECKPOINT_PERIOD", str(half),
            "DATALOADER.NUM_WORKERS", workers, "SEED", "0"]
env = dict(os.environ, OMP_NUM_THREADS="1")
straight = os.path.join(root, f"straight_w{workers}")
subprocess.run(cmd(straight), check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
inter = os.path.join(root, f"inter_w{workers}")
p = subprocess.Popen(cmd(inter), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
marker = os.path.join(inter, "last_checkpoint")
while True:
    if os.path.exists(marker) and open(marker).read().strip() == f"model_{half - 1:07d}.pth":
        os.kill(p.pid, signal.SIGKILL)
        break
    if p.poll() is not None:
        raise SystemExit("finished before kill")
    time.sleep(0.05)
p.wait()
subprocess.run(cmd(inter, "--resume"), check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
a = torch.load(os.path.join(straight, "model_final.pth"), weights_only=True)["model"]
b = torch.load(os.path.join(inter, "model_final.pth"), weights_only=True)["model"]
diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
print(f"workers={workers} iterations={total}: max |straight - resumed| = {diff:.3e}, bit-identical: {diff == 0}")
