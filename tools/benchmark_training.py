#!/usr/bin/env python
"""Speed and memory of a Mask2Former training iteration on the real training path: the model of
``Trainer.build_model``, the optimizer of ``mask2former.engine.build_optimizer`` (per-parameter
learning rates, its gradient clipping) and a batch of synthetic images with random instance masks.

Reports seconds per iteration (median over --iters after --warmup iterations), split into data
(building the batch), backbone, pixel decoder, transformer decoder, matcher, losses (criterion
without the matcher), the rest of the forward (input normalisation, targets), backward and
optimizer step, plus peak memory. Random weights are fine for speed. Example (the figure in
README.md: COCO panoptic R50, 2 images of 512x512 with 6 instances each, 2 threads, CPU):

    python tools/benchmark_training.py \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --size 512 --batch 2 --instances 6 --threads 2 --warmup 1 --iters 3

``--count-flops`` also counts the multiply-adds of an iteration's convolutions and matrix
products (forward and backward), the rate they make at the median time and, on the CPU, the best
rate of one large matrix product on this machine: how far the iteration is from what the
hardware's kernels can do.

To compare two versions of the code, run it through tools/benchmark_side_by_side.py.
"""
import argparse
import os
import statistics
import sys
import time

from benchmark_stages import StageTimer, add_common_arguments, current_rss_mib, import_code_root, parse_size
from benchmark_stages import count_multiply_adds, device_sync, matrix_product_roof, peak_rss_mib
from benchmark_stages import report_memory_and_save, time_model_stages, torch_device

CODE_ROOT = import_code_root(sys.argv) if __name__ == "__main__" else None

STAGES = (
    "data",
    "backbone",
    "pixel_decoder",
    "transformer_decoder",
    "matcher",
    "losses",
    "other_forward",
    "backward",
    "optimizer_step",
)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="image size N or HxW (default 512)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--instances", type=int, default=6, help="random instance masks per image")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (the median is reported)")
    parser.add_argument(
        "--count-flops",
        action="store_true",
        help="also count the multiply-adds of an iteration (one more, untimed) and compare the rate "
        "achieved with the best matrix-product rate of this machine (CPU)",
    )
    add_common_arguments(parser)
    return parser


def synthetic_batch(cfg, size, batch, instances, seed):
    """Images (uint8) and `instances` random rectangles per image with random classes, in the
    DatasetMapper format the model trains on. Deterministic in `seed`."""
    import torch
    from detectron2.structures import BitMasks, Instances

    height, width = size
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        masks = torch.zeros((instances, height, width), dtype=torch.bool)
        for m in masks:
            y0 = int(torch.randint(0, height // 2, (1,), generator=g))
            x0 = int(torch.randint(0, width // 2, (1,), generator=g))
            h = int(torch.randint(height // 8, height // 2, (1,), generator=g))
            w = int(torch.randint(width // 8, width // 2, (1,), generator=g))
            m[y0 : y0 + h, x0 : x0 + w] = True
        target = Instances((height, width))
        target.gt_classes = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (instances,), generator=g)
        target.gt_masks = BitMasks(masks)
        inputs.append({"image": image, "instances": target, "height": height, "width": width})
    return inputs


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or args.instances < 0:
        raise SystemExit("--iters and --batch must be >= 1, --warmup and --instances >= 0")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import mask2former  # noqa: F401  (the detectron2 compatibility layer first)
    import torch
    from mask2former.engine import Trainer, build_optimizer, load_config, use_cpu_without_cuda

    device = torch_device(args)
    cfg = load_config(args.config_file, args.opts)
    use_cpu_without_cuda(cfg)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()

    torch.manual_seed(0)
    model = Trainer.build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    amp = cfg.SOLVER.AMP.ENABLED and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None

    sync = device_sync(device)
    timer = StageTimer(sync)
    time_model_stages(timer, model)
    timer.wrap(model.criterion, "forward", "losses")
    timer.wrap(model.criterion.matcher, "forward", "matcher")

    print(
        f"code {CODE_ROOT} | config {args.config_file} | {args.batch} x {args.size[0]}x{args.size[1]}, "
        f"{args.instances} instances each | device {args.device} | threads {torch.get_num_threads()} | "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters | "
        f"{type(optimizer).__name__} with {len(optimizer.param_groups)} parameter groups",
        flush=True,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mib()

    totals, per_stage, cpu_totals, cpu_per_stage = [], [], [], []
    for i in range(args.warmup + args.iters):
        # The same batch and the same random draws (matcher and point sampling) in every version.
        torch.manual_seed(1000 + i)
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        with timer.stage("data"):
            batch = synthetic_batch(cfg, args.size, args.batch, args.instances, seed=i)
        with timer.stage("other_forward"):
            with torch.autocast(device.type, enabled=amp):
                loss_dict = model(batch)
            losses = sum(loss_dict.values())
        with timer.stage("backward"):
            optimizer.zero_grad()
            (scaler.scale(losses) if amp else losses).backward()
        with timer.stage("optimizer_step"):
            if amp:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        sync()
        total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
        seconds, cpu_seconds = timer.take()
        timed = i >= args.warmup
        if timed:
            totals.append(total)
            cpu_totals.append(cpu_total)
            per_stage.append(seconds)
            cpu_per_stage.append(cpu_seconds)
        label = f"iter {i - args.warmup + 1}/{args.iters}" if timed else f"warm-up {i + 1}/{args.warmup}"
        split = ", ".join(f"{name} {seconds.get(name, 0.0):.3f}" for name in STAGES)
        print(f"  {label}: {total:.3f} s (loss {float(losses):.4f}) [{split}]", flush=True)

    figures = {
        "code_root": CODE_ROOT,
        "config": args.config_file,
        "size": list(args.size),
        "batch": args.batch,
        "instances": args.instances,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "seconds_per_iter": statistics.median(totals),
        "all_seconds_per_iter": totals,
        "stages": {name: statistics.median(s.get(name, 0.0) for s in per_stage) for name in STAGES},
        "all_stages": {name: [s.get(name, 0.0) for s in per_stage] for name in STAGES},
        # Process CPU time (all threads): steadier than wall time on a loaded machine.
        "cpu_seconds_per_iter": statistics.median(cpu_totals),
        "all_cpu_seconds_per_iter": cpu_totals,
        "all_cpu_stages": {name: [s.get(name, 0.0) for s in cpu_per_stage] for name in STAGES},
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_training_mib": rss_before,
    }
    split = ", ".join(f"{name} {figures['stages'][name]:.3f}" for name in STAGES)
    print(
        f"seconds/iteration (median of {args.iters}): {figures['seconds_per_iter']:.3f}  [{split}]; "
        f"process CPU time {figures['cpu_seconds_per_iter']:.3f} s/iteration"
    )
    if args.count_flops:
        figures.update(count_iteration_flops(cfg, args, model, optimizer, figures["seconds_per_iter"], device))
    report_memory_and_save(figures, device, rss_before, "training", args.json)
    return figures


def count_iteration_flops(cfg, args, model, optimizer, seconds_per_iter, device):
    """Multiply-adds of the first timed iteration's batch, forward and backward (counted in one
    more iteration that does not step the optimizer), the rate they make at the median time and,
    on the CPU, the best matrix-product rate of this machine at the same thread count."""
    import torch

    torch.manual_seed(1000 + args.warmup)
    batch = synthetic_batch(cfg, args.size, args.batch, args.instances, seed=args.warmup)

    def run_backward(losses):
        optimizer.zero_grad()
        losses.backward()

    gmac_forward, gmac_backward = count_multiply_adds(lambda: sum(model(batch).values()), run_backward)
    optimizer.zero_grad()
    figures = {
        "gmac_forward": gmac_forward,
        "gmac_backward": gmac_backward,
        "gmac_per_second": (gmac_forward + gmac_backward) / seconds_per_iter,
    }
    line = (
        f"multiply-adds per iteration (convolutions and matrix products): forward {gmac_forward:.1f} G, "
        f"backward {gmac_backward:.1f} G; {figures['gmac_per_second']:.1f} G/s at the median time"
    )
    if device.type == "cpu":
        roof = matrix_product_roof()
        figures["matrix_product_roof_gmac_per_second"] = roof
        line += "; best 2048^3 product here: " + ", ".join(f"{name} {rate:.1f} G/s" for name, rate in roof.items())
    print(line)
    return figures


if __name__ == "__main__":
    main()
