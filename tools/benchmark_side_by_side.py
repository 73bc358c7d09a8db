#!/usr/bin/env python
"""Time two (or more) checkouts of the code with one benchmark script, side by side.

On a shared or noisy machine, figures taken at different times cannot be compared. This runs the
benchmark (tools/benchmark_inference.py or tools/benchmark_training.py of THIS checkout) once per
checkout per round, alternating checkouts within each round and their order between rounds, pools
the timed iterations of all rounds and reports, per stage, the median of each checkout and the
ratio to the first (the baseline). Example, today's code against commit aa4dffe:

    git worktree add /tmp/m2f-base aa4dffe
    python tools/benchmark_side_by_side.py --code-roots /tmp/m2f-base . --rounds 4 -- \\
        tools/benchmark_inference.py \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --size 512 --threads 2 --warmup 1 --iters 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmark_stages import checkout_labels


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-roots", nargs="+", required=True, help="checkouts; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each checkout, interleaved")
    parser.add_argument("--json", default="", help="also write every run's figures to this JSON file")
    parser.add_argument("benchmark", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS... (the benchmark to run)")
    return parser


def _pooled(run_figures, cpu):
    """Per stage, every timed iteration of every run of one checkout (wall or CPU seconds)."""
    pooled = {}
    for figures in run_figures:
        kind = "per_iter" if "all_seconds_per_iter" in figures else "per_image"
        pooled.setdefault("total", []).extend(figures[f"all_{'cpu_' if cpu else ''}seconds_{kind}"])
        for name, values in figures["all_cpu_stages" if cpu else "all_stages"].items():
            pooled.setdefault(name, []).extend(values)
        if kind == "per_image" and not cpu:
            pooled.setdefault("post-processing", []).extend(figures["all_postprocess_seconds"])
    return pooled


def _table(runs, roots, cpu):
    pooled = {root: _pooled(runs[root], cpu) for root in roots}
    lines = [
        "| stage | " + " | ".join(roots) + " | " + " | ".join(f"speed-up of {r}" for r in roots[1:]) + " |",
        "|" + "---|" * (2 * len(roots)),
    ]
    medians = {}
    for stage in pooled[roots[0]]:
        medians[stage] = [statistics.median(pooled[r][stage]) for r in roots]
        ratios = [medians[stage][0] / m if m > 0 else float("nan") for m in medians[stage][1:]]
        lines.append(
            f"| {stage} | " + " | ".join(f"{m:.3f}" for m in medians[stage]) + " | "
            + " | ".join(f"{r:.2f}x" for r in ratios) + " |"
        )
    return "\n".join(lines), medians


def main(argv=None):
    args = get_parser().parse_args(argv)
    command = args.benchmark[1:] if args.benchmark[:1] == ["--"] else args.benchmark
    if not command or not os.path.isfile(command[0]):
        raise SystemExit("give the benchmark after --: -- tools/benchmark_inference.py --config-file ...")
    # A checkout may be given twice (an A/A comparison shows the noise): runs are kept per position.
    roots, labels = checkout_labels(args.code_roots)
    runs = {label: [] for label in labels}
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            # Alternate the order too, so that neither checkout always runs first in a round.
            order = list(range(len(roots))) if round_index % 2 == 0 else list(range(len(roots)))[::-1]
            for index in order:
                root, label = roots[index], labels[index]
                out = os.path.join(tmp, f"run{round_index}_{index}.json")
                cmd = [sys.executable, command[0], "--code-root", root, "--json", out, *command[1:]]
                print(f"round {round_index + 1}/{args.rounds}: {label}", flush=True)
                result = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if result.returncode != 0:
                    sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
                    raise SystemExit(f"benchmark failed for {root} (exit {result.returncode})")
                print("  " + [line for line in result.stdout.splitlines() if line.startswith("seconds/")][-1])
                with open(out) as f:
                    runs[label].append(json.load(f))

    count = sum(len(figures["all_stages"]["backbone"]) for figures in runs[labels[0]])
    print(f"\ncommand: {' '.join(command)}")
    print(f"medians of {count} timed iterations per checkout ({args.rounds} interleaved runs each)")
    wall_table, wall = _table(runs, labels, cpu=False)
    cpu_table, cpu = _table(runs, labels, cpu=True)
    print("\nwall-clock seconds\n" + wall_table)
    print("\nprocess CPU seconds (all threads)\n" + cpu_table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "code_roots": labels, "runs": runs, "wall": wall, "cpu": cpu}, f, indent=1)


if __name__ == "__main__":
    main()
