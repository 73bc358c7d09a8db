"""The benchmark scripts on a tiny model: per-stage figures that add up, and the side-by-side driver
comparing two checkouts (here the same one twice) from interleaved runs."""
import json
import os
import subprocess
import sys

import torch

from mask2former.modeling.onednn_linear import onednn_linear

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
        "--threads", "1", "--warmup", "0", "--iters", "2", "--count-flops", "--json", str(out), *TINY_MODEL,
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
    # The backward computes two products (input and weight gradients) for most forward ones.
    assert figures["gmac_backward"] > figures["gmac_forward"] > 0
    rate = (figures["gmac_forward"] + figures["gmac_backward"]) / figures["seconds_per_iter"]
    assert abs(figures["gmac_per_second"] - rate) < 1e-9 * rate
    assert all(value > 0 for value in figures["matrix_product_roof_gmac_per_second"].values())


def test_multiply_adds_of_a_convolution_and_a_onednn_linear_layer_counted_by_hand():
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    from benchmark_stages import count_multiply_adds

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    image = torch.randn(1, 3, 8, 8)
    # Enough rows for the oneDNN path of onednn_linear, whose op torch's counter does not know.
    rows = torch.randn(2048, 16, requires_grad=True)
    weight = torch.randn(8, 16, requires_grad=True)

    forward, backward = count_multiply_adds(
        lambda: conv(image).sum() + onednn_linear(rows, weight).sum(), lambda loss: loss.backward()
    )
    conv_macs = 8 * 8 * 4 * 3 * 9  # output pixels x out channels x in channels x taps
    linear_macs = 2048 * 16 * 8
    assert round(forward * 1e9) == conv_macs + linear_macs
    # The image needs no gradient: the convolution's weight gradient, and both of the linear's.
    assert round(backward * 1e9) == conv_macs + 2 * linear_macs


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
