#!/usr/bin/env python
"""Boundary AP of COCO-format instance segmentation results.

    python tools/evaluate_coco_boundary_ap.py \
        --gt-json-file datasets/coco/annotations/instances_val2017.json \
        --dt-json-file output/inference/coco_instances_results.json

Same command line as upstream Mask2Former's tool; the Boundary IoU measure is implemented in
mask2former/evaluation/boundary_evaluation.py (see its docstring) on top of pycocotools' COCOeval.
``--iou-type segm`` gives the ordinary mask AP of the same files, for comparison.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.evaluation.boundary_evaluation import (  # noqa: E402
    DEFAULT_DILATION_RATIO,
    evaluate_coco_boundary_ap,
)


def get_parser():
    parser = argparse.ArgumentParser(description="Boundary AP of COCO instance segmentation.")
    parser.add_argument("--gt-json-file", required=True, help="COCO instance annotations (json)")
    parser.add_argument(
        "--dt-json-file", required=True, help="COCO results, e.g. coco_instances_results.json"
    )
    parser.add_argument("--iou-type", default="boundary", choices=["boundary", "segm"])
    parser.add_argument(
        "--dilation-ratio",
        default=DEFAULT_DILATION_RATIO,
        type=float,
        help="boundary width as a fraction of the image diagonal",
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    for path in (args.gt_json_file, args.dt_json_file):
        if not os.path.isfile(path):
            raise SystemExit(f"error: no such file: {path}")
    print(args)
    results = evaluate_coco_boundary_ap(
        args.gt_json_file,
        args.dt_json_file,
        iou_type=args.iou_type,
        dilation_ratio=args.dilation_ratio,
    )
    name = "Boundary AP" if args.iou_type == "boundary" else "Mask AP"
    scores = ", ".join(f"{k} {v:.3f}" for k, v in results.items())
    print(f"{name} (dilation ratio {args.dilation_ratio}): {scores}")
    return results


if __name__ == "__main__":
    main()
