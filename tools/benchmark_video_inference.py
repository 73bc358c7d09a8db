#!/usr/bin/env python
"""Peak memory of VideoMaskFormer inference on one long clip: ours (only the 10 kept instances are
resized, one at a time) against the reference implementation's order (all Q query masks
upsampled to the input size first, then the top 10 chosen and resized together).

Each variant runs in a fresh process; the figure is the growth of the process's peak resident
memory (ru_maxrss) during inference, after the model and the input frames exist. Random weights
(the memory does not depend on them). Example (the closing note's figures):

    python tools/benchmark_video_inference.py --frames 100 --input-size 180x320 --output-size 360x640
    python tools/benchmark_video_inference.py --postprocess-only --input-size 360x640 --output-size 720x1280

With --postprocess-only only the step that differs runs (on random decoder outputs): seconds.
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mask2former_video  # noqa: E402,F401  (imports mask2former first: compatibility layer)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from benchmark_stages import parse_size, peak_rss_mib  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from mask2former.engine import load_config  # noqa: E402
from mask2former_video import add_maskformer2_video_config  # noqa: E402

DEFAULT_CONFIG = "configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml"


def upsample_everything_inference(pred_logits, pred_masks, image_size, padded_size, height, width, topk=10):
    """The reference implementation's order of operations: every query's (T, h, w) mask logits are
    upsampled to the padded input size, then the top-k (query, class) pairs are chosen, their masks
    cropped, resized to the output size and thresholded at 0. Returns (scores, labels, masks (k, T,
    height, width) bool), sorted by decreasing score."""
    num_classes = pred_logits.shape[-1] - 1
    all_masks = F.interpolate(pred_masks, size=padded_size, mode="bilinear", align_corners=False)
    scores = F.softmax(pred_logits, dim=-1)[:, :-1]
    labels = torch.arange(num_classes).repeat(pred_logits.shape[0])
    top_scores, top_indices = scores.flatten(0, 1).topk(min(topk, scores.numel()), sorted=True)
    masks = all_masks[top_indices // num_classes][:, :, : image_size[0], : image_size[1]]
    masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
    return top_scores, labels[top_indices], masks > 0


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--input-size", type=parse_size, default=(180, 320), help="frame size fed to the model, HxW")
    parser.add_argument("--output-size", type=parse_size, default=(360, 640), help="original video size, HxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("both", "ours", "upsample-everything"), default="both")
    parser.add_argument(
        "--postprocess-only",
        action="store_true",
        help="time and measure only the post-processing, on random decoder outputs of the shape the "
        "model gives (Q from the config, T frames, 1/4 of the padded input size)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def run_one(args):
    torch.set_num_threads(args.threads)
    # Backbone and pixel decoder a few frames at a time in both variants: the same for both, and it
    # keeps their activations from dominating the peak.
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.TEST.FRAMES_PER_BATCH", "10"]
    cfg = load_config(args.config_file, opts + list(args.opts), add_configs=(add_maskformer2_video_config,))
    model = build_model(cfg).eval()
    if args.postprocess_only:
        return run_postprocess(args, cfg, model)
    if args.mode == "upsample-everything":

        def inference_video(pred_logits, pred_masks, image_size, padded_size, height, width):
            scores, labels, masks = upsample_everything_inference(
                pred_logits, pred_masks, image_size, padded_size, height, width
            )
            return {
                "image_size": (height, width),
                "pred_scores": scores.tolist(),
                "pred_labels": labels.tolist(),
                "pred_masks": list(masks),
            }

        model.inference_video = inference_video
    generator = torch.Generator().manual_seed(0)
    h, w = args.input_size
    frames = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for _ in range(args.frames)]
    video = {"image": frames, "height": args.output_size[0], "width": args.output_size[1]}

    @torch.no_grad()
    def run():
        return model([video])["pred_masks"]

    measure_and_print(args, run)


def run_postprocess(args, cfg, model):
    generator = torch.Generator().manual_seed(0)
    divisibility = cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY
    h, w = args.input_size
    padded = (-(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility)
    num_queries, num_classes = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    pred_logits = torch.randn(num_queries, num_classes + 1, generator=generator)
    pred_masks = torch.randn(num_queries, args.frames, padded[0] // 4, padded[1] // 4, generator=generator)
    size_args = ((h, w), padded, *args.output_size)

    def run():
        if args.mode == "ours":
            return model.inference_video(pred_logits, pred_masks, *size_args)["pred_masks"]
        return upsample_everything_inference(pred_logits, pred_masks, *size_args)[2]

    measure_and_print(args, run)


def measure_and_print(args, run):
    """Run `run` (returning the predicted masks) once and print, as one JSON line, its time, the
    peak RSS and how much the peak grew during the run."""
    before = peak_rss_mib()
    start = time.perf_counter()
    masks = run()
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    print(json.dumps({
        "mode": args.mode,
        "peak_rss_mib": round(peak, 1),
        "inference_growth_mib": round(peak - before, 1),
        "seconds": round(seconds, 1),
        "instances": len(masks),
        "mask_shape": list(masks[0].shape),
    }))


def main():
    args = get_parser().parse_args()
    if args.mode != "both":
        run_one(args)
        return
    results = {}
    for mode in ("ours", "upsample-everything"):
        command = [sys.executable, os.path.abspath(__file__), "--mode", mode] + sys.argv[1:]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    print(
        f"{args.frames} frames, input {args.input_size[0]}x{args.input_size[1]}, output "
        f"{args.output_size[0]}x{args.output_size[1]}, {args.config_file}"
        + (" (post-processing only)" if args.postprocess_only else "")
    )
    for mode, r in results.items():
        print(
            f"  {mode:20s} peak RSS {r['peak_rss_mib']:8.1f} MiB, growth during inference "
            f"{r['inference_growth_mib']:8.1f} MiB, {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
