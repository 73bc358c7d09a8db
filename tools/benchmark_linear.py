#!/usr/bin/env python
"""MKL's GEMM (F.linear) against oneDNN (mask2former.modeling.onednn_linear) on the linear layers
this project runs on the CPU, interleaved in one run: GMAC per second of process CPU time (all
threads: on a shared machine wall time mostly measures the other processes) per path for forward
and for forward + backward, and the largest difference of the two results.

Default shapes (rows, in, out): the deformable encoder of the R50 pixel decoder at 512x512 (5,376
tokens per image: value/output projections, offsets + attention weights, FFN), and Swin-T's
stage-1 MLP and attention projections at 512x512 (16,384 tokens).

    python tools/benchmark_linear.py --threads 2
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mask2former.modeling.onednn_linear import onednn_linear  # noqa: E402

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


if __name__ == "__main__":
    main()
