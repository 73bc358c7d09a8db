#!/usr/bin/env python
"""
The built-in video example: train a small video Mask2Former on the synthetic video dataset on the
CPU, evaluate it with the YouTube-VIS evaluator and draw its tracks.

    .venv/bin/python tools/run_video_example.py [--output-dir output/video_example] [--num-threads 2] [KEY VALUE ...]

Steps:
  1. load the datasets: the synthetic videos (mask2former_video/data_video/datasets/synthetic_vis.py,
     in $DETECTRON2_DATASETS/synthetic_vis) are generated if they are not there yet;
  2. train configs/youtubevis_synthetic/video_maskformer2_R18_cpu.yaml with train_net_video.py's
     Trainer (losses, learning rate and ETA logged every 20 iterations);
  3. evaluate on the validation videos: AP, AP50, AP75, APs, APm, APl, AR1, AR10 (YouTube-VIS rules);
  4. write into the output directory: `tracks.gif` (input | ground truth | predicted tracks, one
     colour per track, for the first validation videos), `inference/results.json` (the predictions
     in the YouTube-VIS submission format), `loss_curve.png`, `summary.json` and `model_final.pth`.

The goal of the example: AP >= 30 on the validation videos; the summary says whether it was reached.
"""
import json
import logging
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
# First: sets OMP_WAIT_POLICY and applies the Detectron2 compatibility layer before torch/detectron2 load.
import train_net_video  # noqa: E402,F401  isort: skip

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402

from demo.predictor import tile_horizontally  # noqa: E402
from demo_video.predictor import VideoPredictor, draw_video_predictions  # noqa: E402
from example_common import parse_args, prepare_run, print_metrics  # noqa: E402
from example_common import train_timed, training_config, write_loss_curve  # noqa: E402
from train_net_video import Trainer, setup  # noqa: E402

DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "youtubevis_synthetic", "video_maskformer2_R18_cpu.yaml")
AP_GOAL = 30.0
VIS_SCALE = 2  # the frames are 96x128: draw them larger

logger = logging.getLogger("mask2former.run_video_example")


def train(args):
    cfg = training_config(args, setup)
    start = time.perf_counter()
    logger.info("Step 1/4: loading the videos (the synthetic ones are generated on first use) ...")
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        DatasetCatalog.get(name)
    logger.info("Datasets ready (%.1f s).", time.perf_counter() - start)
    logger.info(
        "Step 2/4: training %s for %d iterations (%d clips of %d frames) on %d CPU thread(s) ...",
        os.path.relpath(args.config_file, REPO_ROOT),
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.IMS_PER_BATCH,
        cfg.INPUT.SAMPLING_FRAME_NUM,
        torch.get_num_threads(),
    )
    model, results, train_seconds, eval_seconds = train_timed(Trainer, cfg)
    return cfg, model, results.get("segm", {}), train_seconds, eval_seconds


def _ground_truth(record):
    """The record's annotations in the model's output form, to draw them like predictions."""
    import pycocotools.mask as mask_util
    from detectron2.structures import polygons_to_bitmask

    tracks = {}
    height, width = record["height"], record["width"]
    for t, objects in enumerate(record["annotations"]):
        for obj in objects:
            track = tracks.setdefault(obj["id"], {"label": obj["category_id"], "masks": np.zeros((record["length"], height, width), bool)})
            segm = obj["segmentation"]
            mask = mask_util.decode(segm) if isinstance(segm, dict) else polygons_to_bitmask(segm, height, width)
            track["masks"][t] = mask.astype(bool)
    return {
        "pred_scores": [1.0] * len(tracks),
        "pred_labels": [track["label"] for track in tracks.values()],
        "pred_masks": [track["masks"] for track in tracks.values()],
    }


@torch.no_grad()
def write_animation(cfg, model, output_dir, num_videos):
    """tracks.gif: one row per validation video (input | ground truth | predictions), one GIF frame per video frame."""
    dataset_name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num_videos]
    predictor = VideoPredictor(cfg, model=model)
    rows = []
    for record in records:
        frames = [read_image(path, format="RGB") for path in record["file_names"]]
        predictions = predictor(frames)
        scaled = [np.kron(frame, np.ones((VIS_SCALE, VIS_SCALE, 1), np.uint8)) for frame in frames]
        truth = draw_video_predictions(frames, _ground_truth(record), metadata, 0.0, VIS_SCALE, show_scores=False)
        drawn = draw_video_predictions(frames, predictions, metadata, 0.5, scale=VIS_SCALE)
        rows.append([tile_horizontally([a, b, c]) for a, b, c in zip(scaled, truth, drawn)])
    num_frames = min(len(row) for row in rows)
    gif_frames = []
    for t in range(num_frames):
        stacked = []
        for row in rows:
            stacked += [row[t], np.full((4, row[t].shape[1], 3), 255, np.uint8)]
        gif_frames.append(Image.fromarray(np.concatenate(stacked[:-1], axis=0)))
    path = os.path.join(output_dir, "tracks.gif")
    gif_frames[0].save(path, save_all=True, append_images=gif_frames[1:], duration=300, loop=0)
    return path


def main(argv=None):
    args = parse_args(
        argv, __doc__.split("\n\n")[0], DEFAULT_CONFIG, "output/video_example", 4, "validation videos in the animation"
    )
    prepare_run(args)

    cfg, model, metrics, train_seconds, eval_seconds = train(args)
    logger.info("Step 3/4: evaluation on %s done (%.0f s).", cfg.DATASETS.TEST[0], eval_seconds)
    logger.info("Step 4/4: writing the animation and the loss curve ...")
    gif_path = write_animation(cfg, model, args.output_dir, args.num_vis)
    curve_path = write_loss_curve(args.output_dir)

    headline = {k: metrics.get(k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")}
    summary = {
        "config": os.path.relpath(args.config_file, REPO_ROOT),
        "iterations": cfg.SOLVER.MAX_ITER,
        "clips_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "frames_per_clip": cfg.INPUT.SAMPLING_FRAME_NUM,
        "cpu_threads": args.num_threads,
        "training_minutes": round(train_seconds / 60.0, 2),
        "evaluation_minutes": round(eval_seconds / 60.0, 2),
        "metrics": headline,
        "all_metrics": metrics,
    }
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)

    print_metrics(
        "============= Mask2Former synthetic video example =============",
        cfg, args, train_seconds, eval_seconds, headline, name_width=5,
    )
    ap = headline.get("AP")
    if ap is not None:
        print(f"goal AP >= {AP_GOAL:.0f}: " + ("REACHED" if ap >= AP_GOAL else "NOT reached"))
    print(f"animation:   {gif_path}")
    print(f"loss curve:  {curve_path}")
    print(f"predictions: {os.path.join(args.output_dir, 'inference', 'results.json')}")
    print(f"summary:     {os.path.join(args.output_dir, 'summary.json')}")
    return summary


if __name__ == "__main__":
    main()
