#!/usr/bin/env python
"""
Draw a Mask2Former model's predictions on images.

    python demo/demo.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --input images/*.jpg --output vis/ --opts MODEL.WEIGHTS model_final_94dc52.pkl

For every input image, writes a PNG with the panoptic, instance and semantic predictions the
config enables (MODEL.MASK_FORMER.TEST.*_ON) side by side.
"""
import argparse
import glob
import logging
import os
import sys
import time

# Runnable as `python demo/demo.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  (applies the Detectron2 compatibility layer first)

import cv2  # noqa: E402
import tqdm  # noqa: E402

from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from demo.predictor import VisualizationDemo, tile_horizontally  # noqa: E402
from train_net import check_inputs, load_config, use_cpu_without_cuda  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description="Mask2Former demo: visualise predictions on images")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config file")
    parser.add_argument("--input", nargs="+", required=True, help="image paths or glob patterns")
    parser.add_argument(
        "--output",
        required=True,
        help="a folder for the visualisations (or a file name when there is a single input)",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score of drawn instances"
    )
    parser.add_argument(
        "--onnx",
        metavar="FILE",
        help="run this ONNX export of the config's model (tools/export_model.py) with onnxruntime instead of PyTorch",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs"
    )
    return parser


def expand_inputs(patterns):
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"--input {pattern}: no such file")
        paths.extend(matches)
    return paths


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    logger = setup_logger(name="mask2former")
    paths = expand_inputs(args.input)
    cfg = load_config(args.config_file, args.opts)
    use_cpu_without_cuda(cfg)
    check_inputs(cfg)
    cfg.freeze()
    predictor = None
    if args.onnx:
        from mask2former.export import OnnxPredictor

        predictor = OnnxPredictor(cfg, args.onnx)
    demo = VisualizationDemo(cfg, score_threshold=args.confidence_threshold, predictor=predictor)

    single_file = len(paths) == 1 and os.path.splitext(args.output)[1] != ""
    if not single_file:
        os.makedirs(args.output, exist_ok=True)
    for path in tqdm.tqdm(paths, disable=len(paths) == 1):
        image = read_image(path, format="BGR")
        start = time.perf_counter()
        predictions, panels = demo.run_on_image(image)
        logger.info("%s: %s in %.2fs", path, ", ".join(panels) or "no outputs", time.perf_counter() - start)
        if not panels:
            continue
        drawing = tile_horizontally(list(panels.values()))
        out_path = args.output if single_file else os.path.join(
            args.output, os.path.splitext(os.path.basename(path))[0] + ".png"
        )
        cv2.imwrite(out_path, drawing[:, :, ::-1])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
