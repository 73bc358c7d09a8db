#!/usr/bin/env python
"""Post-processing speed, side by side with an earlier commit's implementation, and a bit-for-bit
check of the outputs.

Runs the config's network once (random weights unless --weights) on a random image, then times
post-processing -- from the head outputs (class logits, stride-4 mask logits) to the Detectron2
results, upsampling included -- of this checkout and of ``--baseline`` (a git commit whose
``mask2former/maskformer_model.py`` still holds the inference code), interleaved repetition by
repetition so that machine load affects both alike. Untrained class logits are nearly uniform,
so panoptic inference keeps no query; ``--class-scale`` multiplies them to make the predictions
confident the way a trained model's are (the default case reports both). Untrained predictions
are also alike across queries, so that the top (query, class) pairs of instance inference are
all of one stuff class; ``--confident N`` adds the case of a trained model's output: N queries
(seeded random) each confident of a random class, the others of "no object", mask logits x6.

    python tools/benchmark_postprocess.py \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --size 512 --threads 2 --iters 9 --baseline aa4dffe
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from unittest import mock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import mask2former  # noqa: E402,F401  (applies the detectron2 compatibility layer first)
import torch  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY, build_model  # noqa: E402
from torch import nn  # noqa: E402

from mask2former.modeling import postprocessing  # noqa: E402
from mask2former.utils.checkpoint import load_checkpoint  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_inference import parse_size, setup_cfg  # noqa: E402


def load_baseline_class(ref):
    """MaskFormer as defined in ``ref``'s maskformer_model.py, imported beside the current package
    (its relative imports resolve to this checkout's modules; it is not registered)."""
    path = "mask2former/maskformer_model.py"
    try:
        source = subprocess.check_output(["git", "show", f"{ref}:{path}"], cwd=REPO, stderr=subprocess.PIPE)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"--baseline {ref}: cannot read {path} from git ({e})")
    module = types.ModuleType("mask2former._baseline_maskformer_model")
    module.__package__ = "mask2former"
    with mock.patch.object(META_ARCH_REGISTRY, "register", lambda obj=None: (lambda o: o)):
        exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    return module.MaskFormer


def baseline_model(cls, model):
    head = nn.Module()
    head.num_classes = model.sem_seg_head.num_classes
    return cls(
        backbone=nn.Identity(),
        sem_seg_head=head,
        criterion=None,
        num_queries=model.num_queries,
        object_mask_threshold=model.object_mask_threshold,
        overlap_threshold=model.overlap_threshold,
        metadata=model.metadata,
        size_divisibility=model.size_divisibility,
        sem_seg_postprocess_before_inference=model.sem_seg_postprocess_before_inference,
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
        semantic_on=model.semantic_on,
        panoptic_on=model.panoptic_on,
        instance_on=model.instance_on,
        test_topk_per_image=model.test_topk_per_image,
    ).eval()


def run_baseline(old, pred_logits, pred_masks, padded_size, image_size, height, width):
    """The baseline's forward() from the head outputs on (its own inference code)."""
    mask_pred = torch.nn.functional.interpolate(pred_masks, size=padded_size, mode="bilinear", align_corners=False)[0]
    mask_cls = pred_logits[0]
    if old.sem_seg_postprocess_before_inference:
        mask_pred = postprocessing.resize_to_output(mask_pred, image_size, height, width)
        return old.postprocess(mask_cls.to(mask_pred), mask_pred)
    sem_seg = old.semantic_inference(mask_cls, mask_pred)
    return {"sem_seg": postprocessing.resize_to_output(sem_seg, image_size, height, width)}


def run_current(settings, pred_logits, pred_masks, padded_size, image_size, height, width):
    mask_pred = postprocessing.upsample_masks(pred_masks, padded_size)[0]
    return postprocessing.postprocess_image(pred_logits[0], mask_pred, image_size, height, width, settings)


def identical(a, b):
    """Bit-for-bit equality of two results dicts; returns a list of differences."""
    diffs = []
    if set(a) != set(b):
        return [f"keys {sorted(a)} vs {sorted(b)}"]
    if "sem_seg" in a and not torch.equal(a["sem_seg"], b["sem_seg"]):
        diffs.append("sem_seg")
    if "panoptic_seg" in a:
        if not torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0]) or a["panoptic_seg"][1] != b["panoptic_seg"][1]:
            diffs.append("panoptic_seg")
    if "instances" in a:
        x, y = a["instances"], b["instances"]
        for field in ("pred_masks", "scores", "pred_classes"):
            if not torch.equal(getattr(x, field), getattr(y, field)):
                diffs.append(f"instances.{field}")
        if not torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor):
            diffs.append("instances.pred_boxes")
    return diffs


def trained_like(pred_logits, pred_masks, confident, seed=0):
    """Head outputs shaped like a trained model's: ``confident`` queries each sure of a random
    class, the others of "no object"; sharper mask logits."""
    g = torch.Generator().manual_seed(seed)
    num_queries, num_labels = pred_logits.shape[-2:]
    logits = torch.randn(pred_logits.shape, generator=g) * 2
    classes = torch.randint(0, num_labels - 1, (num_queries,), generator=g)
    classes[confident:] = num_labels - 1
    logits[..., torch.arange(num_queries), classes] += 10
    return logits.to(pred_logits), pred_masks * 6


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="input size N or HxW (default 512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=9, help="timed repetitions of each implementation")
    parser.add_argument("--baseline", default="aa4dffe", help="git commit holding the implementation to compare with")
    parser.add_argument(
        "--class-scale", type=float, action="append", default=None,
        help="multiply the class logits (repeatable; default: 1 and 8, untrained and confident predictions)",
    )
    parser.add_argument(
        "--confident", type=int, default=30,
        help="also time trained-like outputs with this many confident queries (0: skip this case)",
    )
    parser.add_argument("--weights", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args)
    torch.manual_seed(0)  # the same random weights every run
    model = build_model(cfg).eval()
    if args.weights:
        print(load_checkpoint(model, args.weights))
    old = baseline_model(load_baseline_class(args.baseline), model)
    settings = model.postprocess_settings()
    height, width = args.size
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    with torch.inference_mode():
        images = model.preprocess_image([{"image": image}])
        outputs = model.sem_seg_head(model.backbone(images.tensor))
    padded_size = tuple(images.tensor.shape[-2:])
    image_size = images.image_sizes[0]
    print(
        f"config {args.config_file} | {height}x{width} (padded {padded_size[0]}x{padded_size[1]}) | threads "
        f"{torch.get_num_threads()} | baseline {args.baseline} | {args.iters} interleaved repetitions each"
    )
    cases = [(f"class logits x{scale:g}", outputs["pred_logits"] * scale, outputs["pred_masks"])
             for scale in args.class_scale or [1.0, 8.0]]
    if args.confident:
        logits, masks = trained_like(outputs["pred_logits"], outputs["pred_masks"], args.confident)
        cases.append((f"{args.confident} confident queries", logits, masks))
    all_identical = True
    for case, pred_logits, pred_masks in cases:
        call = (pred_logits, pred_masks, padded_size, image_size, height, width)
        times = {"baseline": [], "current": []}
        cpu_times = {"baseline": [], "current": []}
        with torch.inference_mode():
            for i in range(args.iters + 1):
                # Alternate which one goes first, so neither always runs on a warmer cache.
                order = [("baseline", old), ("current", settings)][:: 1 if i % 2 else -1]
                results = {}
                for name, impl in order:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    results[name] = (run_baseline if name == "baseline" else run_current)(impl, *call)
                    if i > 0:  # the first round is a warm-up
                        times[name].append(time.perf_counter() - start)
                        cpu_times[name].append(time.process_time() - cpu_start)
                diffs = identical(results["baseline"], results["current"])
                all_identical &= not diffs
        base, cur = statistics.median(times["baseline"]), statistics.median(times["current"])
        cpu_base, cpu_cur = statistics.median(cpu_times["baseline"]), statistics.median(cpu_times["current"])
        segments = results["current"].get("panoptic_seg", (None, []))[1]
        instances = len(results["current"]["instances"]) if "instances" in results["current"] else 0
        print(
            f"{case}: {len(segments)} panoptic segments, {instances} instances | wall: baseline {base:.4f} s, current "
            f"{cur:.4f} s (median) -> {base / cur:.2f}x | process CPU time: baseline {cpu_base:.4f} s, current "
            f"{cpu_cur:.4f} s -> {cpu_base / cpu_cur:.2f}x | outputs bit-identical: {'yes' if not diffs else diffs}"
        )
    if not all_identical:
        raise SystemExit("outputs differ from the baseline")


if __name__ == "__main__":
    main()
