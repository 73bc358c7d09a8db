"""Shared pieces of tools/benchmark_inference.py and tools/benchmark_training.py: which checkout to
import, wall-clock timers around the model's stages, and memory figures.

``--code-root DIR`` makes a benchmark import ``mask2former`` from another checkout (e.g. an older
commit in a ``git worktree``), so that tools/benchmark_side_by_side.py can time two versions of the
code with the same benchmark script, alternately, in one run.
"""
import argparse
import math
import os
import resource
import sys
import time
from collections import defaultdict


def import_code_root(argv):
    """Put the checkout named by ``--code-root`` (default: this one) first on sys.path, before
    anything imports mask2former. Returns its absolute path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for i, arg in enumerate(argv):
        if arg == "--code-root" and i + 1 < len(argv):
            root = argv[i + 1]
        elif arg.startswith("--code-root="):
            root = arg.split("=", 1)[1]
    root = os.path.abspath(root)
    if not os.path.isdir(os.path.join(root, "mask2former")):
        raise SystemExit(f"--code-root {root}: no mask2former package there")
    sys.path.insert(0, root)
    return root


def checkout_labels(code_roots):
    """Absolute paths of the checkouts to compare, each checked to hold a mask2former package, and
    their labels: a checkout given twice (an A/A run shows the noise) is labelled by position."""
    roots = [os.path.abspath(r) for r in code_roots]
    for root in roots:
        if not os.path.isdir(os.path.join(root, "mask2former")):
            raise SystemExit(f"--code-roots: {root} holds no mask2former package")
    labels = [root if roots.count(root) == 1 else f"{root} (#{i + 1})" for i, root in enumerate(roots)]
    return roots, labels


class StageTimer:
    """Wall-clock seconds and process CPU seconds (all threads) spent in named stages.

    ``wrap(obj, attr, name)`` replaces the bound method ``obj.attr`` by a timed one. Time spent in a
    stage nested inside another is counted in the inner stage only (the outer one is charged its
    own time), so the stages of an iteration add up to at most its total. CPU time is the steadier
    figure on a loaded machine (it does not count time spent waiting for a core), wall time the
    one a user sees on a quiet machine.
    """

    def __init__(self, sync=lambda: None):
        self.sync = sync
        self.seconds = defaultdict(float)
        self.cpu_seconds = defaultdict(float)
        self._stack = []

    def wrap(self, obj, attr, name):
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(obj, attr, timed)

    def _charge(self, name, since):
        wall, cpu = time.perf_counter(), time.process_time()
        self.seconds[name] += wall - since[0]
        self.cpu_seconds[name] += cpu - since[1]
        return [wall, cpu]

    def stage(self, name):
        timer = self

        class _Stage:
            def __enter__(self):
                timer.sync()
                now = [time.perf_counter(), time.process_time()]
                if timer._stack:
                    outer, since = timer._stack[-1]
                    timer._stack[-1][1] = timer._charge(outer, since)
                    now = timer._stack[-1][1]
                timer._stack.append([name, now])

            def __exit__(self, *exc):
                timer.sync()
                inner, since = timer._stack.pop()
                now = timer._charge(inner, since)
                if timer._stack:
                    timer._stack[-1][1] = now
                return False

        return _Stage()

    def take(self):
        """(wall seconds, CPU seconds) per stage since the last take()."""
        taken = dict(self.seconds), dict(self.cpu_seconds)
        self.seconds, self.cpu_seconds = defaultdict(float), defaultdict(float)
        return taken


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def add_common_arguments(parser):
    """The flags both benchmarks take, besides their own: config, threads, device, code root, JSON
    output and the config overrides (last, as they take the rest of the command line)."""
    parser.add_argument("--config-file", required=True, help="model config (YAML)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--code-root", default="", help="checkout whose mask2former to import (default: this one)")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")


def parse_size(text):
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"--size must be N or HxW, got {text!r}")


# torch is imported inside the functions below: the benchmarks set OMP_WAIT_POLICY and choose the
# code root before torch and mask2former load.
def torch_device(args):
    """Apply --threads and check --device; returns the torch.device."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA device is available")
    return device


def device_sync(device):
    """A function that waits for the device's queued work (nothing to wait for on the CPU), so
    that wall-clock timers measure the work itself."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return sync


def time_model_stages(timer, model):
    """Time the three parts of a Mask2Former forward under their stage names."""
    # backbone_features may compute a ResNet's features without calling its forward (the fused
    # inference path); checkouts that predate it call the backbone directly.
    if hasattr(model, "backbone_features"):
        timer.wrap(model, "backbone_features", "backbone")
    else:
        timer.wrap(model.backbone, "forward", "backbone")
    timer.wrap(model.sem_seg_head.pixel_decoder, "forward_features", "pixel_decoder")
    timer.wrap(model.sem_seg_head.predictor, "forward", "transformer_decoder")


def _onednn_linear_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs):
    # mkldnn._linear_pointwise(rows, weight, ...): rows (..., K) times weight (N, K) transposed.
    return 2 * math.prod(input_shape) * weight_shape[0]


def count_multiply_adds(forward, backward):
    """(forward, backward) multiply-adds, in G, of the convolutions and matrix products that
    ``result = forward()`` and then ``backward(result)`` run: torch's FLOP counter (which counts
    one multiply-add as two flops) plus a formula for the oneDNN linear op this project calls.
    Element-wise work, norms, sampling and the deformable attention's own kernel are not counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        custom[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        result = forward()
        forward_flops = counter.get_total_flops()
        backward(result)
    return forward_flops / 2e9, (counter.get_total_flops() - forward_flops) / 2e9


def matrix_product_roof(size=2048, repeats=5):
    """GMAC per second (best of `repeats`, wall time) of one size^3 float32 matrix product on the
    current thread count: by oneDNN's linear primitive and by torch.mm (MKL on the CPU). The
    best rate these libraries reach on this machine, the yardstick for a model's achieved rate."""
    import torch

    # Plain torch calls, not the project's wrappers: the yardstick must not depend on the checkout
    # that --code-root imports.
    a, b = torch.randn(size, size), torch.randn(size, size)
    kernels = {"mm": lambda: torch.mm(a, b)}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available():
        kernels["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    roof = {}
    for name, kernel in kernels.items():
        kernel()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            kernel()
            best = min(best, time.perf_counter() - start)
        roof[name] = size**3 / best / 1e9
    return roof


def report_memory_and_save(figures, device, rss_before, phase, json_path):
    """Add the peak CUDA memory (on CUDA) to `figures`, print the memory line ("RSS before
    `phase`") and write `figures` to `json_path` when one is given."""
    import json

    import torch

    if device.type == "cuda":
        figures["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    memory = f"peak RSS {figures['peak_rss_mib']:.0f} MiB (RSS before {phase} {rss_before:.0f} MiB)"
    if "peak_cuda_allocated_mib" in figures:
        memory += f", peak CUDA allocated {figures['peak_cuda_allocated_mib']:.0f} MiB"
    print(memory)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=1)
