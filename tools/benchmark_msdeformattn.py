#!/usr/bin/env python
"""Time and peak memory of multi-scale deformable attention, per implementation.

Shapes are those of the Mask2Former R50 pixel decoder's encoder (self-attention over the res5, res4,
res3 maps at strides 32, 16, 8; 256 channels in 8 heads, 4 points per level), for square inputs of
the given sizes and batch sizes. Two things are measured for every available path (CUDA kernel, CPU
kernel, pure PyTorch; see mask2former/modeling/pixel_decoder/ops/backend.py):

  core    ms_deform_attn on (value, sampling locations, attention weights)
  module  the whole MSDeformAttn layer (projections, softmax, sampling)

each in inference (forward under no_grad) and training (forward + backward). Times are the median of
--repeats runs after one warm-up run. Peak memory is the most memory allocated at once by the
measured call, over what was allocated before it (CPU: from the profiler's allocation events;
CUDA: torch.cuda.max_memory_allocated). Process CPU time (all threads) is printed too: on a busy
machine it varies less than wall time (with several threads it includes OpenMP's spin-waiting).

Example (the figures to report; quiet machine):
    python tools/benchmark_msdeformattn.py --threads 2 --repeats 10
Quick check:
    python tools/benchmark_msdeformattn.py --sizes 256 --batches 1 --repeats 2
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from mask2former.modeling.pixel_decoder.ops import backend  # noqa: E402
from mask2former.modeling.pixel_decoder.ops.functions import ms_deform_attn  # noqa: E402
from mask2former.modeling.pixel_decoder.ops.modules import MSDeformAttn  # noqa: E402

D_MODEL, HEADS, POINTS = 256, 8, 4
STRIDES = (32, 16, 8)  # encoder level order: low to high resolution
IM2COL_STEP = 64


def level_shapes(size):
    return [(size // s, size // s) for s in STRIDES]


def reference_points(shapes, batch, device):
    """The encoder's reference points: each query at the centre of its own pixel, on every level."""
    centres = []
    for height, width in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(height, device=device) + 0.5) / height,
            (torch.arange(width, device=device) + 0.5) / width,
            indexing="ij",
        )
        centres.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    points = torch.cat(centres, 0)
    return points[None, :, None, :].expand(batch, -1, len(shapes), -1).contiguous()


def core_inputs(shapes, batch, device, generator):
    """Value, and locations within a few pixels of each query's reference point."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    starts = torch.cumsum(areas, 0) - areas
    num_values, levels = int(areas.sum()), len(shapes)
    head_dim = D_MODEL // HEADS

    def randn(*size):
        return torch.randn(*size, generator=generator).to(device)

    value = randn(batch, num_values, HEADS, head_dim)
    sizes_xy = spatial_shapes.flip(-1).to(torch.float32)[None, None, None, :, None, :]
    offsets = 2.0 * randn(batch, num_values, HEADS, levels, POINTS, 2) / sizes_xy
    locations = reference_points(shapes, batch, device)[:, :, None, :, None, :] + offsets
    weights = randn(batch, num_values, HEADS, levels * POINTS).softmax(-1).view(batch, num_values, HEADS, levels, POINTS)
    return value, spatial_shapes, starts, locations, weights


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, repeats):
    """Median wall time and median process CPU time (all threads) of fn, in ms."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000.0 * statistics.median(wall), 1000.0 * statistics.median(cpu)


@contextlib.contextmanager
def _quiet_stderr():
    """Silences the profiler's C++ start/stop lines (written straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_mib(fn, device):
    """Largest amount of memory held at once by fn's allocations."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak / 2**20


def measure(forward, train_inputs, device, repeats):
    """(forward ms, forward+backward ms, forward MiB, forward+backward MiB, forward CPU ms,
    forward+backward CPU ms)."""

    def inference():
        with torch.no_grad():
            forward()

    def training():
        for t in train_inputs:
            t.grad = None
        out = forward()
        out.backward(torch.ones_like(out))

    inference_ms, inference_cpu_ms = median_ms(inference, device, repeats)
    training_ms, training_cpu_ms = median_ms(training, device, repeats)
    return (
        inference_ms,
        training_ms,
        peak_mib(inference, device),
        peak_mib(training, device),
        inference_cpu_ms,
        training_cpu_ms,
    )


def paths_for(device, requested):
    names = [p for p in ("cuda", "cpu", "pytorch") if requested is None or p in requested]
    usable = []
    for name in names:
        if name == "pytorch" or (name == device.type and (backend.has_cuda_kernel() if name == "cuda" else backend.has_cpu_kernel())):
            usable.append(name)
    return usable


def run(args):
    device = torch.device(args.device)
    rows = []
    header = "{:<7} {:>5} {:>5} {:<8} {:>10} {:>12} {:>9} {:>11} {:>11} {:>11}".format(
        "what", "size", "batch", "path", "fwd ms", "fwd+bwd ms", "fwd MiB", "f+b MiB", "fwd CPU ms", "f+b CPU ms"
    )
    kernels = backend.load_kernels()
    if kernels is None:
        extension = "not built ({})".format(backend.kernel_load_error())
    else:
        extension = "CPU kernel ({}){}".format(kernels.cpu_kernel_isa(), " + CUDA kernel" if kernels.with_cuda() else "")
    print("device {}, {} threads, torch {}, extension: {}".format(device, torch.get_num_threads(), torch.__version__, extension))
    print(header)
    print("-" * len(header))
    for what in args.what:
        for size in args.sizes:
            shapes = level_shapes(size)
            for batch in args.batches:
                generator = torch.Generator().manual_seed(0)
                value, spatial_shapes, starts, locations, weights = core_inputs(shapes, batch, device, generator)
                if what == "core":
                    train_inputs = [t.requires_grad_() for t in (value, locations, weights)]

                    def forward():
                        return ms_deform_attn(value, spatial_shapes, starts, locations, weights, IM2COL_STEP)

                else:
                    torch.manual_seed(0)
                    module = MSDeformAttn(D_MODEL, len(shapes), HEADS, POINTS).to(device)
                    features = torch.randn(batch, value.shape[1], D_MODEL, generator=generator).to(device)
                    points = reference_points(shapes, batch, device)
                    train_inputs = list(module.parameters())

                    def forward():
                        return module(features, points, features, spatial_shapes, starts)

                baseline = None
                for path in paths_for(device, args.paths):
                    with backend.use_backend(path):
                        result = measure(forward, train_inputs, device, args.repeats)
                    if path == "pytorch":
                        baseline = result
                    rows.append((what, size, batch, path, result))
                    print(
                        "{:<7} {:>5} {:>5} {:<8} {:>10.2f} {:>12.2f} {:>9.1f} {:>11.1f} {:>11.1f} {:>11.1f}".format(
                            what, size, batch, path, *result
                        ),
                        flush=True,
                    )
                if baseline is not None:
                    for row in rows:
                        if row[:3] == (what, size, batch) and row[3] != "pytorch":
                            fwd, train = baseline[0] / row[4][0], baseline[1] / row[4][1]
                            fwd_cpu, train_cpu = baseline[4] / row[4][4], baseline[5] / row[4][5]
                            print(
                                "{:<7} {:>5} {:>5} {:<8} speed-up over pytorch: forward {:.1f}x, forward+backward "
                                "{:.1f}x (CPU time: {:.1f}x, {:.1f}x); peak memory {:.2f}x / {:.2f}x of "
                                "pytorch's".format(
                                    what,
                                    size,
                                    batch,
                                    row[3],
                                    fwd,
                                    train,
                                    fwd_cpu,
                                    train_cpu,
                                    row[4][2] / max(baseline[2], 1e-9),
                                    row[4][3] / max(baseline[3], 1e-9),
                                ),
                                flush=True,
                            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="input image sizes (square)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="batch sizes")
    parser.add_argument(
        "--what", nargs="+", choices=["core", "module"], default=["core", "module"], help="what to measure"
    )
    parser.add_argument(
        "--paths", nargs="+", choices=["cuda", "cpu", "pytorch"], default=None, help="paths (default: all available)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    for size in args.sizes:
        if size % max(STRIDES) != 0:
            parser.error("--sizes must be multiples of {} (got {})".format(max(STRIDES), size))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device {} but CUDA is not available".format(args.device))
    run(args)


if __name__ == "__main__":
    main()
