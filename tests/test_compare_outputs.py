"""tools/compare_outputs.py on the small synthetic model: one checkout against itself gives exactly
zero differences (PASS), and a copy of it with one line changed is caught (FAIL, exit code 1)."""
import json
import os
import shutil
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml")
TINY_MODEL = ["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "3"]
DECODER = os.path.join("mask2former", "modeling", "transformer_decoder", "mask2former_transformer_decoder.py")
# The change: the decoder's final layer norm with eps 1e-2 instead of 1e-5, a ~0.5% change of the
# class and mask embeddings' input.
LINE, CHANGED = "self.decoder_norm = nn.LayerNorm(hidden_dim)", "self.decoder_norm = nn.LayerNorm(hidden_dim, eps=1e-2)"


def _changed_copy(tmp_path):
    root = tmp_path / "changed"
    shutil.copytree(
        os.path.join(REPO_ROOT, "mask2former"), root / "mask2former", ignore=shutil.ignore_patterns("__pycache__")
    )
    path = root / DECODER
    source = path.read_text()
    assert source.count(LINE) == 1, f"update the test: {DECODER} no longer has {LINE!r}"
    path.write_text(source.replace(LINE, CHANGED))
    return str(root)


def test_same_checkout_is_equal_and_a_changed_copy_fails(tmp_path):
    out = tmp_path / "compare.json"
    changed = _changed_copy(tmp_path)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run(
        [
            sys.executable, "tools/compare_outputs.py", "--code-roots", ".", ".", changed, "--config-file", CONFIG,
            "--size", "64x96", "--threads", "1", "--batch", "2", "--instances", "3", "--json", str(out), *TINY_MODEL,
        ],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    same, other = summary["comparisons"]
    assert not summary["pass"] and "overall: FAIL" in result.stdout

    # The checkout against itself: every figure exactly zero, every discrete output identical.
    assert same["pass"]
    checks = {row["check"].split(" (")[0]: row for row in same["rows"]}
    for name in ("class logits", "mask logits", "semantic scores", "instance scores", "loss loss_ce",
                 "loss loss_mask_0", "loss loss_dice_1", "matching cost matrices", "gradients, "):
        row = next(row for check, row in checks.items() if check.startswith(name))
        assert row["max_abs"] == 0 and row["max_rel"] == 0, row
    assert all(row["ok"] for row in same["rows"])
    assert sum(check.startswith("matching, ") for check in checks) == 3  # final layer + 2 auxiliary
    # The perturbation makes the output non-degenerate: some panoptic segments and instances.
    panoptic = next(row["check"] for row in same["rows"] if row["check"].startswith("panoptic id map"))
    assert not panoptic.endswith("(0 segments)"), panoptic

    # The changed copy: the logits and the losses move well beyond fp32 rounding.
    assert not other["pass"] and other["code_root"] == changed
    failed = {row["check"].split(" (")[0] for row in other["rows"] if not row["ok"]}
    assert {"class logits", "mask logits", "loss loss_ce"} <= failed
    logits = next(row for row in other["rows"] if row["check"].startswith("class logits"))
    assert logits["max_rel"] > 1e-3


def _matching_rows(cost_ref, cost_other, queries_ref, queries_other):
    """compare_matching's verdict for one layer, one image, targets 0..n-1 matched to the queries."""
    import torch

    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    from compare_outputs import Report, compare_matching

    def run(cost, queries):
        pairs = (torch.tensor(queries), torch.arange(len(queries)))
        return {"matchings": [[pairs]], "costs": [[torch.tensor(cost)]]}

    report = Report()
    compare_matching(report, run(cost_ref, queries_ref), run(cost_other, queries_other))
    return report.rows


def test_a_different_matching_passes_only_at_a_tie():
    # Queries 0 and 2 cost the same for target 0: either assignment is optimal.
    tied = [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    row = _matching_rows(tied, tied, [0, 1], [2, 1])[0]
    assert row["ok"] and row["max_abs"] == 0 and "1 pairs differ" in row["note"]
    # Query 2 is 0.5 worse: choosing it is a change of the matching, not a tie.
    worse = [[0.0, 1.0], [1.0, 0.0], [0.5, 1.0]]
    row = _matching_rows(worse, worse, [0, 1], [2, 1])[0]
    assert not row["ok"] and row["max_abs"] == 0.5
    # A gap within what the cost matrices' own difference explains (2 pairs x 2 x 1e-6) is a tie.
    near = [[0.0, 1.0], [1.0, 0.0], [1e-6, 1.0]]
    near_other = [[1e-6, 1.0], [1.0, 0.0], [0.0, 1.0]]
    row = _matching_rows(near, near_other, [0, 1], [2, 1])[0]
    assert row["ok"] and abs(row["max_abs"] - 1e-6) < 1e-12
    # The same assignment: identical.
    assert _matching_rows(worse, worse, [0, 1], [0, 1])[0]["note"] == "identical"
