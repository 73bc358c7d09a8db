"""The benchmark scripts on a tiny model: per-stage figures that add up, and the side-by-side driver
comparing two checkouts (here the same one twice) from interleaved runs."""
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml")
TINY_MODEL = ["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "2"]


def _run(*args):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_training_benchmark_splits_an_iteration_into_its_stages(tmp_path):
    out = tmp_path / "train.json"
    _run(
        "tools/benchmark_training.py", "--config-file", CONFIG, "--size", "64", "--batch", "2", "--instances", "2",
        "--threads", "1", "--warmup", "0", "--iters", "2", "--json", str(out), *TINY_MODEL,
    )
    figures = json.loads(out.read_text())
    assert figures["batch"] == 2 and figures["size"] == [64, 64] and figures["threads"] == 1
    for i, total in enumerate(figures["all_seconds_per_iter"]):
        stages = {name: values[i] for name, values in figures["all_stages"].items()}
        # Every stage ran, and the stages (nested ones counted once) fit in the iteration.
        for name in ("backbone", "pixel_decoder", "transformer_decoder", "matcher", "losses", "backward", "optimizer_step"):
            assert stages[name] > 0, name
        assert sum(stages.values()) <= total * 1.001 + 1e-3
    assert figures["peak_rss_mib"] > figures["rss_before_training_mib"] > 0


def test_side_by_side_interleaves_the_checkouts(tmp_path):
    out = tmp_path / "side.json"
    stdout = _run(
        "tools/benchmark_side_by_side.py", "--code-roots", REPO_ROOT, ".", "--rounds", "2", "--json", str(out), "--",
        "tools/benchmark_inference.py", "--config-file", CONFIG, "--size", "64", "--threads", "1",
        "--warmup", "0", "--iters", "1", *TINY_MODEL,
    )
    rounds = [line for line in stdout.splitlines() if line.startswith("round ")]
    # Two rounds, the checkouts' order swapped in the second.
    assert [line.split(" (#")[1] for line in rounds] == ["1)", "2)", "2)", "1)"]
    summary = json.loads(out.read_text())
    first, second = f"{REPO_ROOT} (#1)", f"{REPO_ROOT} (#2)"
    assert summary["code_roots"] == [first, second]
    assert len(summary["runs"][first]) == len(summary["runs"][second]) == 2
    for kind in ("wall", "cpu"):
        assert {"total", "backbone", "pixel_decoder", "transformer_decoder"} <= set(summary[kind])
    assert "| total |" in stdout and "speed-up of" in stdout
