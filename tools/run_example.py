#!/usr/bin/env python
"""
The built-in example: train a small Mask2Former on the synthetic dataset on the CPU and show that
it learns.

    .venv/bin/python tools/run_example.py [--output-dir output/example] [--num-threads 2] [KEY VALUE ...]

Steps (each logged with its progress):
  1. generate the synthetic dataset (mask2former/data/synthetic.py) if it is not there yet;
  2. train configs/synthetic/panoptic-segmentation/maskformer2_R18_bs8_cpu.yaml with train_net.py's
     Trainer (Detectron2 prints iteration, losses, learning rate and ETA every 20 iterations and
     writes TensorBoard events to the output directory);
  3. evaluate on the validation split: PQ (panoptic), AP (instance) and mIoU (semantic);
  4. write into the output directory: `predictions/*.png` (input | ground truth | panoptic |
     instance | semantic predictions, drawn with Detectron2's Visualizer), `loss_curve.png`,
     `results.json` and the model `model_final.pth`.

The goal of the example is PQ >= 50 on the validation split after at most 15 minutes of training
on a 2-core CPU; the summary says whether it was reached.
"""
import json
import logging
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
# First: train_net sets OMP_WAIT_POLICY (see there) and applies the Detectron2 compatibility layer
# before torch and detectron2 load.
import train_net  # noqa: E402,F401  isort: skip

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

from demo.predictor import draw_predictions, tile_horizontally  # noqa: E402
from example_common import parse_args, prepare_run, print_metrics  # noqa: E402
from example_common import train_timed, training_config, write_loss_curve  # noqa: E402
from mask2former.data.synthetic import ensure_generated, synthetic_root  # noqa: E402
from train_net import Trainer, setup  # noqa: E402

DEFAULT_CONFIG = os.path.join(
    REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml"
)
# The synthetic images are small (128x160): draw them twice as large so that labels stay readable.
VIS_SCALE = 2
PQ_GOAL = 50.0
TRAINING_MINUTES_GOAL = 15.0

logger = logging.getLogger("mask2former.run_example")


def generate_dataset():
    root = synthetic_root()
    start = time.perf_counter()
    logger.info("Step 1/4: synthetic dataset in %s (generated if missing) ...", root)
    ensure_generated(root)
    logger.info("Synthetic dataset ready (%.1f s).", time.perf_counter() - start)


def train(args):
    cfg = training_config(args, setup)
    logger.info(
        "Step 2/4: training %s for %d iterations (batch %d) on %d CPU thread(s) ...",
        os.path.relpath(args.config_file, REPO_ROOT),
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.IMS_PER_BATCH,
        torch.get_num_threads(),
    )
    model, results, train_seconds, eval_seconds = train_timed(Trainer, cfg)
    return cfg, model, results, train_seconds, eval_seconds


def summarize(results):
    """The headline metrics from Detectron2's nested results dict."""
    summary = {}
    for task, metrics in results.items():
        if task == "panoptic_seg":
            summary.update({k: metrics[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st") if k in metrics})
        elif task == "segm":
            summary.update({"AP": metrics.get("AP"), "AP50": metrics.get("AP50")})
        elif task == "sem_seg":
            summary.update({"mIoU": metrics.get("mIoU"), "pACC": metrics.get("pACC")})
    return summary


@torch.no_grad()
def write_visualizations(cfg, model, output_dir, num_images):
    """input | ground truth | panoptic | instance | semantic predictions, for the first validation images."""
    dataset_name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num_images]
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    out_dir = os.path.join(output_dir, "predictions")
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    paths = []
    for record in records:
        image = read_image(record["file_name"], format="RGB")
        height, width = image.shape[:2]
        resized = resize.get_transform(image).apply_image(image)
        model_input = image_for_model(resized, cfg.INPUT.FORMAT)
        predictions = model([{"image": model_input, "height": height, "width": width}])[0]
        panels = draw_predictions(image, predictions, metadata, scale=VIS_SCALE)
        ground_truth = Visualizer(image, metadata, scale=VIS_SCALE).draw_dataset_dict(_ground_truth_record(record))
        enlarged = cv2.resize(image, None, fx=VIS_SCALE, fy=VIS_SCALE, interpolation=cv2.INTER_NEAREST)
        drawing = tile_horizontally([enlarged, ground_truth.get_image(), *panels.values()])
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png")
        cv2.imwrite(path, drawing[:, :, ::-1])
        paths.append(path)
    model.train()
    return paths


def image_for_model(image_rgb, input_format):
    image = image_rgb if input_format == "RGB" else image_rgb[:, :, ::-1]
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _ground_truth_record(record):
    # Visualizer.draw_dataset_dict draws every annotation a record has, on top of each other; keep
    # the most complete one: panoptic, else semantic, else instances.
    for key in ("pan_seg_file_name", "sem_seg_file_name", "annotations"):
        if key in record:
            kept = {key: record[key]}
            if key == "pan_seg_file_name":
                kept["segments_info"] = record["segments_info"]
            return kept
    return {}


def main(argv=None):
    args = parse_args(
        argv, __doc__.split("\n\n")[0], DEFAULT_CONFIG, "output/example", 8, "validation images to visualise"
    )
    prepare_run(args)

    generate_dataset()
    cfg, model, results, train_seconds, eval_seconds = train(args)
    logger.info("Step 3/4: evaluation on %s done (%.0f s).", cfg.DATASETS.TEST[0], eval_seconds)
    logger.info("Step 4/4: writing visualisations and the loss curve ...")
    vis_paths = write_visualizations(cfg, model, args.output_dir, args.num_vis)
    curve_path = write_loss_curve(args.output_dir)

    summary = summarize(results)
    report = {
        "config": os.path.relpath(args.config_file, REPO_ROOT),
        "iterations": cfg.SOLVER.MAX_ITER,
        "batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "cpu_threads": args.num_threads,
        "training_minutes": round(train_seconds / 60.0, 2),
        "evaluation_minutes": round(eval_seconds / 60.0, 2),
        "metrics": summary,
        "all_results": results,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)

    pq = summary.get("PQ")
    print_metrics(
        "================ Mask2Former synthetic example ================",
        cfg, args, train_seconds, eval_seconds, summary, name_width=6,
    )
    if pq is not None:
        reached = pq >= PQ_GOAL and train_seconds <= TRAINING_MINUTES_GOAL * 60
        print(
            f"goal PQ >= {PQ_GOAL:.0f} within {TRAINING_MINUTES_GOAL:.0f} min of training: "
            + ("REACHED" if reached else "NOT reached")
        )
    print(f"visualisations: {os.path.dirname(vis_paths[0]) if vis_paths else '(none)'}")
    print(f"loss curve:     {curve_path}")
    print(f"metrics:        {os.path.join(args.output_dir, 'results.json')}")
    print(f"TensorBoard:    tensorboard --logdir {args.output_dir}")
    return report


if __name__ == "__main__":
    main()
