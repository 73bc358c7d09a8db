#!/usr/bin/env python
"""Time and peak memory of the neighborhood attention implementations.

    python tools/benchmark_neighborhood_attention.py                      # the default grid
    python tools/benchmark_neighborhood_attention.py --sizes 64 --dilations 1 --repeats 1

Default grid: maps of 64x64 and 256x256, 6 heads, head dim 32, kernel 11, dilations 1 and 4, batch
1, fp32, for the "gather" and "tiled" paths (and "natten" when an importable natten with rpb is
present). Each measurement runs in a fresh process, so that its peak memory can be read: the
reported figure is the growth of the process's peak resident memory over the inputs. "gather"
needs about heads*H*W*K*K*head_dim*4 bytes per gathered tensor; runs that would exceed
--max-gather-gb are skipped and say so.
"""
import argparse
import multiprocessing
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _measure(args, size, dilation, implementation, queue):
    import torch

    import mask2former  # noqa: F401  (Detectron2 compatibility layer)
    from mask2former.modeling.backbone.neighborhood_attention import neighborhood_attention_2d

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    shape = (1, args.heads, size, size, args.head_dim)
    q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
    rpb = torch.randn(args.heads, 2 * args.kernel - 1, 2 * args.kernel - 1, generator=generator)
    if args.backward:
        for t in (q, k, v, rpb):
            t.requires_grad_()
    baseline = _peak_rss_mb()

    def step():
        if args.backward:
            out = neighborhood_attention_2d(q, k, v, rpb, args.kernel, dilation, implementation=implementation)
            out.sum().backward()
        else:
            with torch.no_grad():
                neighborhood_attention_2d(q, k, v, rpb, args.kernel, dilation, implementation=implementation)

    step()  # warm-up: index caches, allocator
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    queue.put((min(times), sum(times) / len(times), _peak_rss_mb() - baseline))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dilations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--kernel", type=int, default=11)
    parser.add_argument("--implementations", nargs="+", default=None,
                        help="default: gather, tiled, and natten when available")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--max-gather-gb", type=float, default=4.0)
    args = parser.parse_args()

    implementations = args.implementations
    if implementations is None:
        import mask2former  # noqa: F401
        from mask2former.modeling.backbone.neighborhood_attention import natten_with_rpb

        implementations = ["gather", "tiled"] + (["natten"] if natten_with_rpb() is not None else [])

    mode = "forward+backward" if args.backward else "forward (no grad)"
    print(f"neighborhood attention, {mode}: batch 1, {args.heads} heads, head dim {args.head_dim}, "
          f"kernel {args.kernel}, fp32, {args.threads} threads, best/mean of {args.repeats}")
    print(f"{'map':>9} {'dilation':>8} {'implementation':>14} {'best s':>9} {'mean s':>9} {'peak MB':>9}")
    context = multiprocessing.get_context("spawn")
    for size in args.sizes:
        for dilation in args.dilations:
            for implementation in implementations:
                label = f"{size}x{size}"
                gathered_gb = args.heads * size * size * args.kernel ** 2 * args.head_dim * 4 / 1e9
                if implementation == "gather" and gathered_gb > args.max_gather_gb:
                    print(f"{label:>9} {dilation:>8} {implementation:>14}   skipped: one gathered tensor "
                          f"needs {gathered_gb:.1f} GB (> --max-gather-gb {args.max_gather_gb})")
                    continue
                queue = context.Queue()
                process = context.Process(target=_measure, args=(args, size, dilation, implementation, queue))
                process.start()
                process.join()
                if process.exitcode != 0:
                    print(f"{label:>9} {dilation:>8} {implementation:>14}   failed (exit code {process.exitcode})")
                    continue
                best, mean, peak = queue.get()
                print(f"{label:>9} {dilation:>8} {implementation:>14} {best:9.3f} {mean:9.3f} {peak:9.0f}", flush=True)


if __name__ == "__main__":
    main()
