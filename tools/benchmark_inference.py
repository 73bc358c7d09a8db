#!/usr/bin/env python
"""Inference speed and memory of a Mask2Former config: seconds per image (median over --iters after
--warmup runs) split into backbone, pixel decoder, transformer decoder and post-processing (all
that follows the head: mask upsampling and the semantic/panoptic/instance outputs), and peak
memory. To compare two versions of the code, run it through tools/benchmark_side_by_side.py.

Random weights are fine for speed (post-processing work depends a little on the predictions:
pass --weights for a trained model's figures). Example, the reference figure of the project
(COCO panoptic R50, 512x512, 2 threads, CPU):

    python tools/benchmark_inference.py \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --size 512 --threads 2 --warmup 2 --iters 10 --device cpu
"""
import argparse
import json
import statistics
import sys
import time

from benchmark_stages import StageTimer, add_common_arguments, current_rss_mib, import_code_root, parse_size
from benchmark_stages import device_sync, peak_rss_mib, report_memory_and_save, time_model_stages, torch_device

CODE_ROOT = import_code_root(sys.argv) if __name__ == "__main__" else None

import mask2former  # noqa: E402  (applies the detectron2 compatibility layer first)
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.projects.deeplab import add_deeplab_config  # noqa: E402

from mask2former import add_maskformer2_config  # noqa: E402
from mask2former.utils.checkpoint import load_checkpoint  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="input size N or HxW (default 512)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--iters", type=int, default=10, help="timed runs (the median is reported)")
    parser.add_argument("--weights", default="", help="checkpoint to load (default: random initialisation)")
    parser.add_argument(
        "--compare-onnx",
        action="store_true",
        help="instead: export the model to ONNX at --size and time onnxruntime beside PyTorch with the CPU "
        "kernel and with the pure-PyTorch deformable attention, interleaved, same threads and input "
        "(see compare_onnx)",
    )
    add_common_arguments(parser)
    return parser


def setup_cfg(args):
    cfg = get_cfg()
    add_deeplab_config(cfg)  # MODEL.RESNETS.STEM_TYPE / RES5_MULTI_GRID, as train_net.py
    add_maskformer2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    return cfg


class PeakRss:
    """Highest RSS of this process while the block runs (sampled every 2 ms by a thread): the
    memory one inference path needs beyond what is already resident, comparable between paths
    run in the same process (ru_maxrss only ever grows)."""

    def __enter__(self):
        import threading

        self.start = current_rss_mib()
        self.peak = self.start
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, current_rss_mib())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mib())


def model_and_input(args, cfg):
    """The model in eval mode (with --weights, else random) and a random uint8 image of --size
    (seeded: the same in every run and code version), alone and as the model's input list."""
    model = build_model(cfg).eval()
    if args.weights:
        print(load_checkpoint(model, args.weights))
    height, width = args.size
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    return model, image, [{"image": image, "height": height, "width": width}]


def compare_onnx(args, cfg):
    """seconds/image and peak RSS of three paths, from the same uint8 image to the Detectron2
    results (post-processing included, the same function for all): PyTorch with the compiled CPU
    deformable-attention kernel, PyTorch with its pure-PyTorch path, and the ONNX export run by
    onnxruntime (mask2former.export.OnnxPredictor) with --threads intra-op threads. Repetitions are
    interleaved path by path, so that machine load affects all three alike."""
    import tempfile

    from mask2former.export import OnnxPredictor, export_model
    from mask2former.modeling.pixel_decoder.ops import backend

    model, image, inputs = model_and_input(args, cfg)
    height, width = args.size
    divisibility = max(model.size_divisibility, 1)
    padded = (-(-height // divisibility) * divisibility, -(-width // divisibility) * divisibility)
    with tempfile.TemporaryDirectory() as tmp:
        with torch.inference_mode(False):
            # Timing, not parity: accept masked-attention threshold flips (see export_model); the
            # difference is printed.
            path = export_model(model, "onnx", tmp, *padded, relative_tolerance=1e-2)["path"]
        predictor = OnnxPredictor(cfg, path, threads=args.threads)
        hwc = image.permute(1, 2, 0).numpy()

        def run_pytorch(name):
            with backend.use_backend(name), torch.inference_mode():
                return model(inputs)[0]

        paths = {
            "pytorch (CPU kernel)": lambda: run_pytorch("cpu"),
            "pytorch (pure-PyTorch)": lambda: run_pytorch("pytorch"),
            "onnxruntime": lambda: predictor.predict_resized(hwc, height, width),
        }
        if not backend.has_cpu_kernel():
            del paths["pytorch (CPU kernel)"]
        times = {name: [] for name in paths}
        peaks = {name: 0.0 for name in paths}
        for i in range(args.warmup + args.iters):
            for name, run in paths.items():
                with PeakRss() as rss:
                    start = time.perf_counter()
                    result = run()
                    elapsed = time.perf_counter() - start
                peaks[name] = max(peaks[name], rss.peak - rss.start)
                if i >= args.warmup:
                    times[name].append(elapsed)
                del result
    print(
        f"config {args.config_file} | {height}x{width} | threads {args.threads} | weights {args.weights or 'random'} | "
        f"median of {args.iters} interleaved runs"
    )
    reference = statistics.median(times["pytorch (pure-PyTorch)"])
    figures = {}
    for name in paths:
        seconds = statistics.median(times[name])
        figures[name] = {"seconds_per_image": seconds, "peak_rss_increase_mib": peaks[name]}
        print(
            f"  {name:24s} {seconds:.3f} s/image ({reference / seconds:.2f}x the pure-PyTorch path), "
            f"peak RSS +{peaks[name]:.0f} MiB during inference"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise SystemExit("--iters must be >= 1 and --warmup >= 0")
    device = torch_device(args)
    cfg = setup_cfg(args)
    if args.compare_onnx:
        if device.type != "cpu":
            raise SystemExit("--compare-onnx runs on the CPU (onnxruntime's CPU provider): use --device cpu")
        return compare_onnx(args, cfg)

    model, _, inputs = model_and_input(args, cfg)
    height, width = args.size

    sync = device_sync(device)
    head_done = {}

    def mark_head_done(module, inp, out):
        sync()
        head_done["t"] = time.perf_counter()

    model.sem_seg_head.register_forward_hook(mark_head_done)
    stage_timer = StageTimer(sync)
    time_model_stages(stage_timer, model)
    model_stages = ("backbone", "pixel_decoder", "transformer_decoder")

    print(
        f"code {CODE_ROOT} | config {args.config_file} | {height}x{width} | device {args.device} | threads {torch.get_num_threads()} | "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters | "
        f"weights {args.weights or 'random'}",
        flush=True,
    )
    rss_before = current_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    totals, heads, cpu_times, stages, cpu_stages = [], [], [], [], []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = model(inputs)
            sync()
            end, cpu_end = time.perf_counter(), time.process_time()
            timed = i >= args.warmup
            seconds, cpu_seconds = stage_timer.take()
            if timed:
                stages.append(seconds)
                cpu_stages.append(cpu_seconds)
                totals.append(end - start)
                heads.append(head_done["t"] - start)
                cpu_times.append(cpu_end - cpu_start)
            label = f"iter {i - args.warmup + 1}/{args.iters}" if timed else f"warm-up {i + 1}/{args.warmup}"
            split = ", ".join(f"{name} {seconds.get(name, 0.0):.3f}" for name in model_stages)
            print(f"  {label}: {end - start:.3f} s (backbone+head {head_done['t'] - start:.3f} s: {split})", flush=True)
            del outputs

    total = statistics.median(totals)
    head = statistics.median(heads)
    post = statistics.median(t - h for t, h in zip(totals, heads))
    figures = {
        "code_root": CODE_ROOT,
        "config": args.config_file,
        "size": [height, width],
        "device": args.device,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "seconds_per_image": total,
        "backbone_head_seconds": head,
        "postprocess_seconds": post,
        "stages": {name: statistics.median(s.get(name, 0.0) for s in stages) for name in model_stages},
        "all_seconds_per_image": totals,
        "all_postprocess_seconds": [t - h for t, h in zip(totals, heads)],
        "all_stages": {name: [s.get(name, 0.0) for s in stages] for name in model_stages},
        "all_cpu_seconds_per_image": cpu_times,
        "all_cpu_stages": {name: [s.get(name, 0.0) for s in cpu_stages] for name in model_stages},
        # CPU time of this process (all threads): less sensitive than wall time to other load.
        "cpu_seconds_per_image": statistics.median(cpu_times),
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_inference_mib": rss_before,
    }
    print(
        f"seconds/image (median of {args.iters}): {total:.3f}  "
        f"[backbone+head {head:.3f} ("
        + ", ".join(f"{name} {figures['stages'][name]:.3f}" for name in model_stages)
        + f"), post-processing {post:.3f}]; "
        f"process CPU time {figures['cpu_seconds_per_image']:.3f} s/image"
    )
    report_memory_and_save(figures, device, rss_before, "inference", args.json)
    return figures


if __name__ == "__main__":
    main()
