#!/usr/bin/env python
"""
Evaluate a YouTube-VIS results file (the CodaLab submission format, e.g. the results.json that
train_net_video.py --eval-only writes) against a ground-truth json with annotations, with the
same code as the evaluator used during training (mask2former_video/data_video/ytvis_eval.py).

    python tools/evaluate_ytvis.py GT_JSON RESULTS_JSON [--output metrics.json]

Prints AP, AP50, AP75, APs, APm, APl, AR1, AR10 and the AP of every category; --output saves
them as json (undefined values, e.g. APl without large objects, as null).
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  isort: skip  (compatibility layer before detectron2)

from mask2former_video.data_video.ytvis_eval import evaluate_ytvis  # noqa: E402


def _load(path, what):
    if not os.path.isfile(path):
        sys.exit(f"{what} {path} does not exist.")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        sys.exit(f"{what} {path} is not valid JSON ({e}).")


def _finite_or_none(value):
    return None if math.isnan(value) else value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gt_json", help="YouTube-VIS ground truth with annotations")
    parser.add_argument("results_json", help="predictions: list of {video_id, category_id, score, segmentations}")
    parser.add_argument("--output", help="write the metrics to this json file")
    args = parser.parse_args(argv)
    gt = _load(args.gt_json, "Ground-truth file")
    if not gt.get("annotations"):
        sys.exit(f"{args.gt_json} has no annotations: results on it can only be scored by the evaluation server.")
    predictions = _load(args.results_json, "Results file")
    if not isinstance(predictions, list):
        sys.exit(f"{args.results_json} must hold a list of predictions.")
    try:
        metrics, per_category, _ = evaluate_ytvis(gt, predictions, json_file=args.gt_json)
    except (ValueError, KeyError) as e:
        sys.exit(f"Cannot evaluate {args.results_json}: {e}")
    print(f"YouTube-VIS evaluation of {len(predictions)} predictions on {len(gt['videos'])} videos:")
    print("  ".join(f"{name} {value:.2f}" for name, value in metrics.items()))
    print("AP per category:")
    width = max(len(name) for name in per_category)
    for name, value in per_category.items():
        print(f"  {name:<{width}}  {value:6.2f}" if not math.isnan(value) else f"  {name:<{width}}     n/a (no ground truth)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {**{k: _finite_or_none(v) for k, v in metrics.items()},
                 "per_category_AP": {k: _finite_or_none(v) for k, v in per_category.items()}},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
