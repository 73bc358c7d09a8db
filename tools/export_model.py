#!/usr/bin/env python
"""Export a Mask2Former image model (normalisation, backbone, pixel decoder, transformer decoder ->
the last layer's class and mask logits) to ONNX, TorchScript or a torch.export program.

    python tools/export_model.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --format onnx --output export/ --height 512 --width 512 --dynamic MODEL.WEIGHTS model_final_94dc52.pkl

Writes OUTPUT/model.onnx (model.ts, model.pt2), then runs the exported file on a test image and
prints the largest difference to PyTorch; exits non-zero when it exceeds the tolerance
(mask2former/export/exporter.py explains it). A model that cannot be exported in the format fails
with the module and the reason before anything is written; files are written under a temporary
name and renamed only when complete and checked. Run the ONNX file with
``mask2former.export.OnnxPredictor`` or ``demo/demo.py --onnx``.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  (applies the detectron2 compatibility layer first)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from mask2former.engine import load_config  # noqa: E402
from mask2former.export import FORMATS, ExportError, check_exportable, export_model  # noqa: E402
from mask2former.utils.checkpoint import load_checkpoint  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the exported file")
    parser.add_argument("--height", type=int, default=512, help="input height of the export (and test image)")
    parser.add_argument("--width", type=int, default=512, help="input width of the export (and test image)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic input height/width (onnx, exported_program)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--tolerance", type=float, default=None,
        help="largest accepted difference to PyTorch, relative to the largest output magnitude "
        "(default 1e-4; see mask2former/export/exporter.py for when a looser one is right)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    try:
        # Before loading weights or tracing anything: fail fast on unsupported models.
        check_exportable(model, args.format, args.dynamic)
        if cfg.MODEL.WEIGHTS:
            print(load_checkpoint(model, cfg.MODEL.WEIGHTS))
        else:
            print("MODEL.WEIGHTS not set: exporting randomly initialised weights")
        result = export_model(
            model, args.format, args.output, args.height, args.width, dynamic=args.dynamic,
            relative_tolerance=args.tolerance,
        )
    except ExportError as e:
        raise SystemExit(f"export_model: cannot export {args.config_file} as {args.format}: {e}")
    print(f"wrote {result['path']}")
    return result


if __name__ == "__main__":
    main()
