#!/usr/bin/env python
"""Compare one training step (losses, Hungarian matching, gradients) of two checkouts of the code.

Each checkout runs in its own process (``--code-root`` as in tools/benchmark_training.py) on the
same random weights (built and saved by the first checkout, loaded by the others), the same
synthetic batch (``synthetic_batch`` of tools/benchmark_training.py) and the same seed for the
random draws of the matcher and the point sampling. Prints, against the first checkout: the largest
absolute and relative difference of each loss, whether every matcher call (one per supervised
prediction) chose the same queries and targets, and the largest gradient differences, absolute and
relative to each parameter's largest gradient entry. Example, this checkout against aa4dffe:

    python tools/compare_training_step.py --code-roots /tmp/m2f-base . \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --size 512 --batch 2 --instances 6 --threads 2
"""
import argparse
import os
import subprocess
import sys
import tempfile

TOOLS = os.path.dirname(os.path.abspath(__file__))


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-roots", nargs="+", required=True, help="checkouts; the first is the reference")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", type=int, default=512, help="square image size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="weights, batch and random draws")
    parser.add_argument("--child", nargs=2, metavar=("WEIGHTS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    return parser


def run_child(args):
    """One checkout: the step's losses, matcher indices and gradients, saved to OUT."""
    sys.path.insert(0, os.path.abspath(args.code_root))
    sys.path.insert(1, TOOLS)
    import mask2former  # noqa: F401  (the detectron2 compatibility layer first)
    import torch
    from benchmark_training import synthetic_batch
    from mask2former.engine import Trainer, load_config, use_cpu_without_cuda

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, [])
    use_cpu_without_cuda(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    torch.manual_seed(args.seed)
    model = Trainer.build_model(cfg).train()
    weights, out = args.child
    if os.path.exists(weights):
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        torch.save(model.state_dict(), weights)

    matches = []
    matcher_forward = model.criterion.matcher.forward

    def recording_forward(outputs, targets):
        indices = matcher_forward(outputs, targets)
        matches.append([(q.tolist(), t.tolist()) for q, t in indices])
        return indices

    model.criterion.matcher.forward = recording_forward
    batch = synthetic_batch(cfg, (args.size, args.size), args.batch, args.instances, seed=args.seed)
    torch.manual_seed(args.seed)
    losses = model(batch)
    sum(losses.values()).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "matches": matches, "grads": grads}, out)


def compare(reference, other):
    import torch

    lines = []
    loss_abs = max((reference["losses"][k] - other["losses"][k]).abs().item() for k in reference["losses"])
    loss_rel = max(
        ((reference["losses"][k] - other["losses"][k]).abs() / reference["losses"][k].abs().clamp(min=1e-12)).item()
        for k in reference["losses"]
    )
    lines.append(
        f"losses: {len(reference['losses'])} (same names: {list(reference['losses']) == list(other['losses'])}), "
        f"max abs diff {loss_abs:.3g}, max rel diff {loss_rel:.3g}; total "
        f"{float(sum(reference['losses'].values())):.6f} vs {float(sum(other['losses'].values())):.6f}"
    )
    same = [a == b for a, b in zip(reference["matches"], other["matches"])]
    lines.append(
        f"matching: {sum(same)} of {len(reference['matches'])} matcher calls identical"
        + ("" if all(same) and len(reference["matches"]) == len(other["matches"]) else " (DIFFERENT)")
    )
    grad_abs, grad_rel, worst = 0.0, 0.0, ""
    for name, g in reference["grads"].items():
        h = other["grads"].get(name)
        if h is None:
            lines.append(f"gradient of {name} missing")
            continue
        diff = (g - h).abs().max().item()
        rel = diff / max(g.abs().max().item(), 1e-30)
        grad_abs = max(grad_abs, diff)
        if rel > grad_rel:
            grad_rel, worst = rel, name
    lines.append(
        f"gradients: {len(reference['grads'])} vs {len(other['grads'])} tensors, max abs diff {grad_abs:.3g}, "
        f"max diff relative to the parameter's largest gradient entry {grad_rel:.3g} ({worst})"
    )
    return lines


def main():
    args = get_parser().parse_args()
    if args.child:
        return run_child(args)
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.pth")
        results = []
        for i, root in enumerate(args.code_roots):
            out = os.path.join(tmp, f"step{i}.pth")
            command = [sys.executable, os.path.abspath(__file__), "--code-root", root, "--child", weights, out]
            command += ["--code-roots", root, "--config-file", args.config_file, "--size", str(args.size)]
            command += ["--batch", str(args.batch), "--instances", str(args.instances)]
            command += ["--threads", str(args.threads), "--seed", str(args.seed)]
            subprocess.run(command, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
            results.append(torch.load(out, weights_only=True))
    for root, result in zip(args.code_roots[1:], results[1:]):
        print(f"{root} against {args.code_roots[0]}:")
        for line in compare(results[0], result):
            print("  " + line)


if __name__ == "__main__":
    main()
