#!/usr/bin/env python
"""Check that two (or more) checkouts of the code compute the same thing: the equality check of
speed work (issue 15). Every checkout runs the same model -- same config, same weights, same input,
same random draws -- on the CPU in its own process; the first is the reference, each other one is compared
with it and gets a PASS or FAIL. Example, the current tree against commit aa4dffe:

    git worktree add /tmp/m2f-base aa4dffe
    python tools/compare_outputs.py --code-roots /tmp/m2f-base . --threads 2 --mode both \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml --size 512

What is compared:

* inference (eval mode, a seeded random uint8 image of --size): the class and mask logits of the
  last decoder layer (the head's output), the semantic scores, the panoptic id map and segments,
  and the instances (scores, classes, masks);
* training (train mode, tools/benchmark_training.py's synthetic batch, the global seed fixed before
  the forward so that point sampling draws the same points): every loss, the matcher's assignment
  for every decoder layer (and its cost matrices when the matcher has ``compute_costs``), and the
  gradient of every parameter after the backward of the summed losses.

Float tensors pass when max|a - b| <= rtol * max|a| (a: the reference; --rtol for outputs and losses,
--grad-rtol for each parameter's gradient). The gradient tolerance, 1e-2, sits above the float32
noise floor measured on the baseline itself (aa4dffe against aa4dffe with oneDNN convolutions
switched off, i.e. only the summation order changed; R50, 512x512, seeds 0 and 2): per-parameter
gradient differences of 1.4e-3 and 4.1e-3, from masked-attention thresholds and importance-sampled
points that a rounding difference moves; losses there differed by at most 6e-7. Panoptic segments (id map and segments_info) must be
identical, instance classes too, and instance masks may differ in at most --instance-mask-pixels
pixels. A matching may differ only where the two assignments are tied up to the fp differences of
the cost matrices: if the reference's matrix C and the other's C' differ by at most eps and both
assignments are optimal for their own matrix, the other assignment costs at most 2 * n * eps more
than the reference's under C (n matched pairs); a larger gap means a real change of the matching.
``--code-roots A A`` (one checkout twice) must give exactly zero differences: a sanity check of the
tool and of the determinism of the code (same thread count in every process).

Weights: the first checkout builds the model (seed --seed) and perturbs it (below), and saves its
state dict; every other checkout builds its model and loads that state dict (strictly: the keys
are an interface), so construction-order changes between versions do not change the weights.
The perturbation: randomly initialised, the decoder makes degenerate predictions. Its random
attention layers average the queries into one (the spread across queries of the last layer's
output is ~8% of the spread across channels for COCO R50), so all queries predict the same class
and nearly the same mask (correlation 0.99); class logits lie within about +-1 of each other
(near-uniform probabilities: no query passes the panoptic object threshold, the panoptic output is
empty and an equality check of it vacuous) and mask logits near 0 cover half the image each (no
segment passes the overlap threshold, and argmax decisions rest on rounding noise). So the first
checkout, before saving the weights:
  * scales the output projections of the decoder's attention layers by --attention-scale (a
    trained decoder keeps its queries apart; spread ratio ~0.75 after this);
  * rescales the class embedding and the last layer of the mask embedding (weights and biases, so
    the logits scale exactly) to a standard deviation of --class-logit-std and --mask-logit-std
    on the test image;
  * turns channel 0 of the mask features into the constant 1 and gives every mask logit the
    offset -(--mask-offset) x --mask-logit-std through channel 0 of the mask embedding, so that a
    query's mask covers a few percent of the image rather than half of it.
With the defaults, COCO R50 at 512x512 predicts 33 distinct classes, 45 queries pass the object
threshold and the panoptic output has 8 segments.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmark_stages import checkout_labels, import_code_root, parse_size

if __name__ == "__main__" and "--child" in sys.argv:
    import_code_root(sys.argv)  # before anything imports mask2former


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-roots", nargs="+", default=[], help="checkouts; the first is the reference")
    parser.add_argument("--config-file", required=True, help="model config (YAML), read by every checkout")
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="image size N or HxW (default 512)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the same in every process)")
    parser.add_argument("--mode", choices=("inference", "training", "both"), default="both")
    parser.add_argument("--batch", type=int, default=2, help="training: images in the synthetic batch")
    parser.add_argument("--instances", type=int, default=6, help="training: instances per image")
    parser.add_argument("--seed", type=int, default=0, help="weights, image, batch and random draws")
    parser.add_argument("--class-logit-std", type=float, default=8.0, help="perturbation, see above")
    parser.add_argument("--mask-logit-std", type=float, default=6.0, help="perturbation, see above")
    parser.add_argument("--mask-offset", type=float, default=2.0, help="perturbation, see above")
    parser.add_argument("--attention-scale", type=float, default=0.1, help="perturbation, see above")
    parser.add_argument("--rtol", type=float, default=1e-4, help="outputs and losses, relative to max|reference|")
    parser.add_argument("--grad-rtol", type=float, default=1e-2, help="gradients, per parameter (see the float32 noise floor above)")
    parser.add_argument("--instance-mask-pixels", type=int, default=0, help="instance mask pixels allowed to differ")
    parser.add_argument("--json", default="", help="also write the comparison to this JSON file")
    # Internal: one checkout's run, in its own process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code-root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--make-weights", default="", help=argparse.SUPPRESS)
    parser.add_argument("--load-weights", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


# ---------------------------------------------------------------------------------------------
# One checkout's run (child process): everything it imports from mask2former is that checkout's.


def _test_image(args):
    import torch

    height, width = args.size
    g = torch.Generator().manual_seed(args.seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    return [{"image": image, "height": height, "width": width}]


def _head_outputs(model, inputs):
    """The head's (last layer) class and mask logits and the model's results for `inputs`."""
    import torch

    captured = {}

    def keep(module, inp, out):
        captured.update(pred_logits=out["pred_logits"].detach().clone(), pred_masks=out["pred_masks"].detach().clone())

    handle = model.sem_seg_head.register_forward_hook(keep)
    try:
        with torch.no_grad():
            results = model(inputs)[0]
    finally:
        handle.remove()
    return captured, results


def perturb(model, args, inputs):
    """Make the untrained predictions non-degenerate (see the module docstring); deterministic."""
    import torch
    from torch import nn

    predictor = model.sem_seg_head.predictor
    class_layer, mask_layer = predictor.class_embed, predictor.mask_embed.layers[-1]
    mask_features = model.sem_seg_head.pixel_decoder.mask_features
    model.eval()
    with torch.no_grad():
        for module in predictor.modules():
            if isinstance(module, nn.MultiheadAttention):
                module.out_proj.weight.mul_(args.attention_scale)
        # Channel 0 of the mask features becomes the constant 1, so that channel 0 of the mask
        # embedding is an offset added to every mask logit (set last).
        mask_features.weight[0] = 0
        mask_features.bias[0] = 1
        mask_layer.weight[0] = 0
        mask_layer.bias[0] = 0
        head, _ = _head_outputs(model, inputs)
        for layer, logits, target in (
            (class_layer, head["pred_logits"], args.class_logit_std),
            (mask_layer, head["pred_masks"], args.mask_logit_std),
        ):
            # Logits are linear in the layer's weight and bias (the mask logits through the
            # mask-feature product): scaling both scales the logits exactly.
            factor = target / float(logits.std())
            layer.weight.mul_(factor)
            layer.bias.mul_(factor)
        mask_layer.bias[0] = -args.mask_offset * args.mask_logit_std


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def run_inference(model, inputs):
    model.eval()
    head, results = _head_outputs(model, inputs)
    out = dict(head)
    if "sem_seg" in results:
        out["sem_seg"] = results["sem_seg"]
    if "panoptic_seg" in results:
        id_map, segments = results["panoptic_seg"]
        out["panoptic_ids"] = id_map
        out["segments_info"] = [{k: _plain(v) for k, v in s.items()} for s in segments]
    if "instances" in results:
        instances = results["instances"]
        out["instance_scores"] = instances.scores
        out["instance_classes"] = instances.pred_classes
        out["instance_masks"] = instances.pred_masks
    return out


def run_training(model, cfg, args):
    import torch
    from benchmark_training import synthetic_batch

    model.train()
    batch = synthetic_batch(cfg, args.size, args.batch, args.instances, seed=args.seed)
    matcher = model.criterion.matcher
    matchings, costs = [], []

    def keep_matching(module, inp, out):
        matchings.append([(q.clone(), t.clone()) for q, t in out])

    handle = matcher.register_forward_hook(keep_matching)
    if hasattr(matcher, "compute_costs"):
        compute_costs = matcher.compute_costs

        def keep_costs(*a, **k):
            result = compute_costs(*a, **k)
            if isinstance(result, dict) and "cost_matrix" in result:
                costs.append(result["cost_matrix"].detach().clone())
            return result

        matcher.compute_costs = keep_costs
    try:
        # The matcher's and the criterion's point sampling draw from the global generator.
        torch.manual_seed(args.seed + 2)
        losses = model(batch)
        model.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
    finally:
        handle.remove()
    images = len(batch)
    if len(costs) != len(matchings) * images:
        costs = []  # not one matrix per layer and image: the matcher works otherwise; no tie check
    return {
        "losses": {k: v.detach() for k, v in losses.items()},
        "matchings": matchings,
        "costs": [costs[i * images : (i + 1) * images] for i in range(len(matchings))] if costs else [],
        "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
        "no_grad": sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None),
    }


def child_main(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import mask2former  # noqa: F401  (the detectron2 compatibility layer first)
    import torch
    from detectron2.modeling import build_model
    from mask2former.engine import load_config, use_cpu_without_cuda

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    use_cpu_without_cuda(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    inputs = _test_image(args)
    if args.make_weights:
        perturb(model, args, inputs)
        torch.save(model.state_dict(), args.make_weights)
    else:
        model.load_state_dict(torch.load(args.load_weights, weights_only=True), strict=True)
    results = {"package": os.path.dirname(os.path.abspath(mask2former.__file__)), "threads": torch.get_num_threads()}
    if args.mode in ("inference", "both"):
        results["inference"] = run_inference(model, inputs)
    if args.mode in ("training", "both"):
        results["training"] = run_training(model, cfg, args)
    torch.save(results, args.out)


# ---------------------------------------------------------------------------------------------
# Comparison (parent process): plain tensors only, no mask2former needed.


class Report:
    """Rows of the table: check, max abs, max rel, tolerance, verdict."""

    def __init__(self):
        self.rows = []

    def add(self, check, ok, abs_diff=None, rel_diff=None, tolerance="", note=""):
        self.rows.append(
            {"check": check, "ok": bool(ok), "max_abs": abs_diff, "max_rel": rel_diff, "tolerance": tolerance,
             "note": note}
        )

    def tensor(self, check, a, b, rtol):
        """max|a-b| and max|a-b| / max|a| of two float tensors, against rtol."""
        abs_diff, rel_diff, note = tensor_difference(a, b)
        ok = note == "" and rel_diff <= rtol
        self.add(check, ok, abs_diff, rel_diff, f"rel {rtol:g}", note)
        return abs_diff, rel_diff

    def same(self, check, equal, note=""):
        self.add(check, equal, tolerance="identical", note=note or ("identical" if equal else ""))

    @property
    def ok(self):
        return all(row["ok"] for row in self.rows)

    def table(self):
        def number(x):
            return "" if x is None else f"{x:.3g}"

        lines = ["| check | max abs diff | max rel diff | tolerance | result |", "|---|---|---|---|---|"]
        for row in self.rows:
            verdict = ("ok" if row["ok"] else "FAIL") + (f": {row['note']}" if row["note"] else "")
            figures = f"{number(row['max_abs'])} | {number(row['max_rel'])}"
            lines.append(f"| {row['check']} | {figures} | {row['tolerance']} | {verdict} |")
        return "\n".join(lines)


def tensor_difference(a, b):
    """(max abs diff, max abs diff relative to max|a|, note): the note says why they are not comparable."""
    import torch

    if tuple(a.shape) != tuple(b.shape):
        return None, None, f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.numel() == 0:
        return 0.0, 0.0, ""
    a, b = a.double(), b.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        if torch.equal(a, b):
            return 0.0, 0.0, ""
        return float("inf"), float("inf"), "non-finite values differ"
    abs_diff = float((a - b).abs().max())
    scale = float(a.abs().max())
    rel_diff = abs_diff / scale if scale > 0 else (0.0 if abs_diff == 0 else float("inf"))
    return abs_diff, rel_diff, ""


def compare_inference(report, ref, other, args):
    report.tensor("class logits (last layer)", ref["pred_logits"], other["pred_logits"], args.rtol)
    report.tensor("mask logits (last layer)", ref["pred_masks"], other["pred_masks"], args.rtol)
    if "sem_seg" in ref or "sem_seg" in other:
        if "sem_seg" in ref and "sem_seg" in other:
            report.tensor("semantic scores", ref["sem_seg"], other["sem_seg"], args.rtol)
        else:
            report.same("semantic scores", False, "present in one checkout only")
    if "panoptic_ids" in ref or "panoptic_ids" in other:
        if "panoptic_ids" in ref and "panoptic_ids" in other:
            a, b = ref["panoptic_ids"], other["panoptic_ids"]
            equal = a.shape == b.shape and bool((a == b).all())
            pixels = int((a != b).sum()) if a.shape == b.shape else None
            report.same(
                f"panoptic id map ({len(ref['segments_info'])} segments)",
                equal,
                "" if equal else (f"{pixels} pixels differ" if pixels is not None else "shapes differ"),
            )
            report.same("panoptic segments_info", ref["segments_info"] == other["segments_info"])
        else:
            report.same("panoptic output", False, "present in one checkout only")
    if "instance_scores" in ref or "instance_scores" in other:
        if not ("instance_scores" in ref and "instance_scores" in other):
            report.same("instances", False, "present in one checkout only")
            return
        report.tensor("instance scores", ref["instance_scores"], other["instance_scores"], args.rtol)
        a, b = ref["instance_classes"], other["instance_classes"]
        classes_equal = torch_equal(a, b)
        note = "" if classes_equal or a.shape != b.shape else f"{int((a != b).sum())} differ"
        report.same(f"instance classes ({len(a)} instances)", classes_equal, note)
        a, b = ref["instance_masks"], other["instance_masks"]
        if a.shape != b.shape:
            report.same("instance masks", False, f"shapes {tuple(a.shape)} vs {tuple(b.shape)}")
        else:
            pixels = int((a.float() != b.float()).sum())
            note = f"{pixels} pixels differ" if pixels else "identical"
            if a.dtype != b.dtype:
                note += f" (dtypes {a.dtype} vs {b.dtype})"
            allowed = args.instance_mask_pixels
            report.add("instance masks", pixels <= allowed, tolerance=f"{allowed} pixels", note=note)


def torch_equal(a, b):
    return tuple(a.shape) == tuple(b.shape) and bool((a == b).all())


def _layer_name(call):
    return "final layer" if call == 0 else f"aux layer {call - 1}"


def compare_matching(report, ref, other):
    """Per decoder layer: identical assignments, or the differing ones explained by ties (see the
    module docstring); costs compared when both checkouts recorded them."""
    if len(ref["matchings"]) != len(other["matchings"]):
        report.same("matcher calls", False, f"{len(ref['matchings'])} vs {len(other['matchings'])}")
        return
    have_costs = bool(ref["costs"]) and bool(other["costs"])
    for call, (images_a, images_b) in enumerate(zip(ref["matchings"], other["matchings"])):
        differing, pairs, gaps = 0, 0, []
        for image, ((qa, ta), (qb, tb)) in enumerate(zip(images_a, images_b)):
            set_a = set(zip(qa.tolist(), ta.tolist()))
            set_b = set(zip(qb.tolist(), tb.tolist()))
            pairs += len(set_a)
            differing += len(set_b - set_a)
            if set_a != set_b and have_costs:
                cost_a, cost_b = ref["costs"][call][image].double(), other["costs"][call][image].double()
                gap = float(cost_a[qb, tb].sum() - cost_a[qa, ta].sum())
                bound = 2 * len(set_a) * float((cost_a - cost_b).abs().max())
                gaps.append((gap, bound))
        check = f"matching, {_layer_name(call)} ({pairs} pairs)"
        if differing == 0:
            report.same(check, True)
        elif not have_costs:
            report.same(check, False, f"{differing} pairs differ (no cost matrices recorded: ties not checked)")
        else:
            worst_gap, bound = max(gaps)
            tie = all(gap <= bound for gap, bound in gaps)
            report.add(
                check, tie, abs_diff=worst_gap, tolerance="ties",
                note=f"{differing} pairs differ; cost gap {worst_gap:.3g} vs fp bound {bound:.3g}"
                + (" (ties)" if tie else " (not a tie)"),
            )
    if have_costs:
        # A figure, not a verdict: what must hold is the matching (checked above).
        diffs = [tensor_difference(a, b) for images_a, images_b in zip(ref["costs"], other["costs"])
                 for a, b in zip(images_a, images_b)]
        notes = [note for _, _, note in diffs if note]
        report.add(
            "matching cost matrices (all layers)", not notes,
            max((d[0] for d in diffs if not d[2]), default=0.0), max((d[1] for d in diffs if not d[2]), default=0.0),
            "(figure)", notes[0] if notes else "",
        )


def compare_training(report, ref, other, args):
    keys_a, keys_b = set(ref["losses"]), set(other["losses"])
    if keys_a != keys_b:
        only = f"only in reference {sorted(keys_a - keys_b)}, only in other {sorted(keys_b - keys_a)}"
        report.same("loss keys", False, only)
    for key in sorted(keys_a & keys_b):
        report.tensor(f"loss {key}", ref["losses"][key], other["losses"][key], args.rtol)
    compare_matching(report, ref, other)
    names_a, names_b = set(ref["grads"]), set(other["grads"])
    if names_a != names_b or ref["no_grad"] != other["no_grad"]:
        report.same("parameters with a gradient", False, f"{len(names_a)} vs {len(names_b)} parameters")
    worst, worst_rel, worst_abs, failing = None, -1.0, 0.0, 0
    for name in sorted(names_a & names_b):
        abs_diff, rel_diff, note = tensor_difference(ref["grads"][name], other["grads"][name])
        if note:
            report.add(f"gradient of {name}", False, note=note)
            continue
        failing += rel_diff > args.grad_rtol
        worst_abs = max(worst_abs, abs_diff)
        if rel_diff > worst_rel:
            worst, worst_rel = name, rel_diff
    if worst is not None:
        worst = f"max rel: {worst}" if worst_rel > 0 else "all identical"
        report.add(
            f"gradients, {len(names_a & names_b)} parameters (max abs over all; {worst})",
            failing == 0, worst_abs, worst_rel, f"rel {args.grad_rtol:g}",
            "" if failing == 0 else f"{failing} parameters over tolerance",
        )


def compare(ref, other, args):
    report = Report()
    if "inference" in ref:
        compare_inference(report, ref["inference"], other["inference"], args)
    if "training" in ref:
        compare_training(report, ref["training"], other["training"], args)
    return report


def run_checkout(root, index, args, tmp, argv_rest):
    weights = os.path.join(tmp, "weights.pt")
    out = os.path.join(tmp, f"results{index}.pt")
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", "--code-root", root, "--out", out,
        "--make-weights" if index == 0 else "--load-weights", weights, *argv_rest,
    ]
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-6000:])
        raise SystemExit(f"compare_outputs: the run of {root} failed (exit {result.returncode})")
    return out


def parent_argv(args):
    """The run's flags, handed to every child unchanged."""
    height, width = args.size
    argv = [
        "--config-file", args.config_file, "--size", f"{height}x{width}", "--threads", str(args.threads),
        "--mode", args.mode, "--batch", str(args.batch), "--instances", str(args.instances),
        "--seed", str(args.seed), "--class-logit-std", str(args.class_logit_std),
        "--mask-logit-std", str(args.mask_logit_std),
        "--mask-offset", str(args.mask_offset), "--attention-scale", str(args.attention_scale),
    ]
    return argv + list(args.opts)


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    if args.child:
        return child_main(args)
    if len(args.code_roots) < 2:
        raise SystemExit("--code-roots needs two or more checkouts (the first is the reference)")
    import torch

    roots, labels = checkout_labels(args.code_roots)
    height, width = args.size
    print(
        f"config {args.config_file} | {height}x{width} | mode {args.mode} | threads {args.threads} | seed {args.seed}"
        + (f" | overrides {' '.join(args.opts)}" if args.opts else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="compare_outputs_") as tmp:
        results = []
        for index, root in enumerate(roots):
            print(f"running {labels[index]}", flush=True)
            path = run_checkout(root, index, args, tmp, parent_argv(args))
            results.append(torch.load(path, weights_only=True))
            # What was compared must be the checkout named, not one found first on the path.
            if results[-1]["package"] != os.path.join(root, "mask2former"):
                raise SystemExit(f"compare_outputs: {root}: the run imported {results[-1]['package']}")

    summary = {"config": args.config_file, "size": [height, width], "mode": args.mode, "threads": args.threads,
               "reference": labels[0], "comparisons": []}
    for label, other in zip(labels[1:], results[1:]):
        report = compare(results[0], other, args)
        print(f"\n{label} against {labels[0]}\n{report.table()}")
        print(f"{'PASS' if report.ok else 'FAIL'}: {label}")
        summary["comparisons"].append({"code_root": label, "pass": report.ok, "rows": report.rows})
    summary["pass"] = all(c["pass"] for c in summary["comparisons"])
    print(f"\noverall: {'PASS' if summary['pass'] else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if not summary["pass"]:
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
