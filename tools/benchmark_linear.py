#!/usr/bin/env python
"""MKL's GEMM (F.linear) against oneDNN (mask2former.modeling.onednn_linear) on the linear layers
this project runs on the CPU, interleaved in one run: GMAC per second of process CPU time (all
threads: on a shared machine wall time mostly measures the other processes) per path for forward
and for forward + backward, and the largest difference of the two results. With
``--backward-kernels`` it also times, on the same operands, the candidate kernels of each backward
product of ``OneDNNLinear`` (the one the module uses is marked ``*``): the input gradient
grad @ weight by GEMM, by oneDNN's backward-data convolution or by oneDNN's linear primitive
given the transposed weight (a strided view, ``*``); the weight gradient grad.T @ rows by GEMM
(``*``), oneDNN's backward-weights convolution or the linear primitive (given a transposed copy of
the narrower operand and a transposed view of the other).

Default shapes (rows, in, out): the deformable encoder of the R50 pixel decoder at 512x512 (5,376
tokens per image: value/output projections, offsets + attention weights, FFN), and Swin-T's
stage-1 MLP and attention projections at 512x512 (16,384 tokens).

    python tools/benchmark_linear.py --threads 2 [--backward-kernels]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mask2former.modeling.onednn_linear import (  # noqa: E402
    _input_gradient,
    _linear_pointwise,
    _weight_gradient,
    onednn_linear,
)

DEFAULT_SHAPES = ("5376,256,256", "5376,256,288", "5376,256,1024", "5376,1024,256", "16384,96,288", "16384,96,384", "16384,384,96")


def parse_shape(text):
    rows, k, n = (int(v) for v in text.split(","))
    return rows, k, n


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES], help="rows,in,out ...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--backward-kernels", action="store_true", help="also time the candidate kernels of the two backward products"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"threads {torch.get_num_threads()} | median of {args.repeats} | GMAC per CPU second "
        "(forward+backward counts 3 products)"
    )
    print(f"{'rows,in,out':>18} | {'F.linear fwd':>12} {'oneDNN fwd':>10} {'ratio':>5} | {'F.linear f+b':>12} {'oneDNN f+b':>10} {'ratio':>5} | max |diff|")
    for rows, k, n in args.shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, k, generator=g, requires_grad=True)
        w = torch.randn(n, k, generator=g, requires_grad=True)
        b = torch.randn(n, generator=g, requires_grad=True)
        grad = torch.randn(rows, n, generator=g)
        gmac = rows * k * n / 1e9
        paths = {"gemm": lambda x, w, b: F.linear(x, w, b), "onednn": onednn_linear}
        fwd, both = {}, {}
        for _ in range(2):  # interleave the paths twice, keep each path's better median
            for name, fn in paths.items():
                with torch.no_grad():
                    t = timed(lambda: fn(x, w, b), args.repeats)
                fwd[name] = min(fwd.get(name, t), t)
                t = timed(lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), grad), args.repeats)
                both[name] = min(both.get(name, t), t)
        with torch.no_grad():
            diff = (paths["gemm"](x, w, b) - onednn_linear(x, w, b)).abs().max().item()
        print(
            f"{rows:>8},{k:>4},{n:>4} | {gmac / fwd['gemm']:12.1f} {gmac / fwd['onednn']:10.1f} {fwd['gemm'] / fwd['onednn']:5.2f} | "
            f"{3 * gmac / both['gemm']:12.1f} {3 * gmac / both['onednn']:10.1f} {both['gemm'] / both['onednn']:5.2f} | {diff:.2e}"
        )
    if args.backward_kernels:
        backward_kernels(args.shapes, args.repeats)


def _as_image(rows):
    """(M, K) contiguous rows as the (1, K, M, 1) channels-last image of a 1x1 convolution."""
    return rows.view(1, -1, 1, rows.shape[1]).permute(0, 3, 1, 2)


def _conv_gradients(grad, rows, weight, output_mask):
    return torch.ops.aten.convolution_backward(
        _as_image(grad), _as_image(rows), weight[:, :, None, None], None,
        [1, 1], [0, 0], [1, 1], False, [0, 0], 1, output_mask,
    )


def _conv_input_gradient(grad, rows, weight):
    return _conv_gradients(grad, rows, weight, [True, False, False])[0].permute(0, 2, 3, 1).reshape(rows.shape)


def _conv_weight_gradient(grad, rows, weight):
    return _conv_gradients(grad, rows, weight, [False, True, False])[1].view(weight.shape)


def _linear_weight_gradient(grad, rows):
    if grad.shape[1] <= rows.shape[1]:
        return _linear_pointwise(grad.t().contiguous(), rows.t(), None, False)
    return _linear_pointwise(rows.t().contiguous(), grad.t(), None, False).t()


# name -> (product, fn(grad, rows, weight)); "*" marks the kernel OneDNNLinear's backward uses.
BACKWARD_KERNELS = {
    "input GEMM": ("input", lambda g, x, w: g.mm(w)),
    "input conv": ("input", _conv_input_gradient),
    "input linear*": ("input", lambda g, x, w: _input_gradient(g, w)),
    "weight GEMM*": ("weight", lambda g, x, w: _weight_gradient(g, x)),
    "weight conv": ("weight", _conv_weight_gradient),
    "weight linear": ("weight", lambda g, x, w: _linear_weight_gradient(g, x)),
}


def backward_kernels(shapes, repeats):
    """GMAC per CPU second of each candidate kernel of the backward products and the largest
    difference to the GEMM result. The kernels take turns call by call (median of `repeats` calls
    each), so that the load of a shared machine weighs on all of them alike."""
    print("\nbackward products, GMAC per CPU second (max |diff| to GEMM)")
    print(f"{'rows,in,out':>18} | " + " ".join(f"{name:>20}" for name in BACKWARD_KERNELS))
    for rows, k, n in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, k, generator=g)
        w = torch.randn(n, k, generator=g)
        grad = torch.randn(rows, n, generator=g)
        reference = {"input": grad.mm(w), "weight": grad.t().mm(x)}
        diffs = {name: (fn(grad, x, w) - reference[product]).abs().max().item() for name, (product, fn) in BACKWARD_KERNELS.items()}
        times = {name: [] for name in BACKWARD_KERNELS}
        for _ in range(repeats):
            for name, (_, fn) in BACKWARD_KERNELS.items():
                start = time.process_time()
                fn(grad, x, w)
                times[name].append(time.process_time() - start)
        gmac = rows * k * n / 1e9
        cells = [f"{gmac / statistics.median(times[name]):9.1f} ({diffs[name]:.1e})" for name in BACKWARD_KERNELS]
        print(f"{rows:>8},{k:>4},{n:>4} | " + " ".join(f"{cell:>20}" for cell in cells))

if __name__ == "__main__":
    main()
