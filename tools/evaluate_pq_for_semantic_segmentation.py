#!/usr/bin/env python
"""PQ (and mIoU) of semantic segmentation predictions, every class being "stuff".

    python tools/evaluate_pq_for_semantic_segmentation.py --dataset-name ade20k_sem_seg_val \
        --json-file output/inference/sem_seg_predictions.json

The json file is the one SemSegEvaluator writes next to its results. Any registered semantic
dataset works (upstream's tool knew ade20k_sem_seg_val, ade20k_full_sem_seg_val and
coco_2017_test_stuff_10k_sem_seg); see mask2former/evaluation/semantic_pq.py for the definition.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  (Detectron2 compatibility, builtin dataset registrations)
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from mask2former.evaluation.semantic_pq import evaluate_pq_for_semantic_segmentation  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description="Evaluate PQ metric for semantic segmentation.")
    parser.add_argument(
        "--dataset-name",
        default="ade20k_sem_seg_val",
        help="registered semantic segmentation dataset, e.g. ade20k_sem_seg_val, "
        "ade20k_full_sem_seg_val, coco_2017_test_stuff_10k_sem_seg",
    )
    parser.add_argument(
        "--json-file", required=True, help="sem_seg_predictions.json written by SemSegEvaluator"
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.dataset_name not in DatasetCatalog.list():
        raise SystemExit(f"error: dataset '{args.dataset_name}' is not registered.")
    if not os.path.isfile(args.json_file):
        raise SystemExit(f"error: no such file: {args.json_file}")
    setup_logger(name="mask2former")
    results = evaluate_pq_for_semantic_segmentation(args.dataset_name, args.json_file)

    print("{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"))
    print("-" * (10 + 7 * 4))
    for name in ("All", "Stuff"):
        print(
            "{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
                name, results["PQ"], results["SQ"], results["RQ"], results["n"]
            )
        )
    print("")
    print(f"mIoU: {results['mIoU']:.2f}")
    return results


if __name__ == "__main__":
    main()
