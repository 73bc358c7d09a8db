#!/usr/bin/env python
"""
Parameters, FLOPs, activations or the structure of the model a config builds (fvcore's
counters), with the command line of upstream's tool:

    python tools/analyze_model.py --tasks parameter flop \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --input-size 800 1216 MODEL.WEIGHTS ""

FLOPs and activations need inputs: with `--input-size H W` (this repository's addition) a fixed
random image of that size, no dataset needed; otherwise `-n` images of the config's first test
dataset, as upstream (`--use-fixed-input-size` then uses a square of INPUT.CROP.SIZE /
INPUT.IMAGE_SIZE instead of each image's own size). One image is counted at a time and the
average over images is reported. fvcore counts a fused multiply-add as one flop and skips the
operators it has no formula for (listed in the warnings), e.g. the multi-scale deformable
attention kernel: see MODEL_ZOO.md for what this means for Mask2Former's figures.
"""
import argparse
import logging
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  (applies the Detectron2 compatibility layer first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis, parameter_count, parameter_count_table  # noqa: E402

from mask2former.engine import check_inputs, load_config, use_cpu_without_cuda  # noqa: E402
from mask2former.utils.checkpoint import Mask2FormerCheckpointer  # noqa: E402

logger = logging.getLogger("mask2former.analyze_model")


def get_parser():
    parser = argparse.ArgumentParser(description="Parameters, FLOPs and activations of a Mask2Former model")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", choices=["flop", "activation", "parameter", "structure"], required=True)
    parser.add_argument("-n", "--num-inputs", type=int, default=100, help="dataset images to average over")
    parser.add_argument("--use-fixed-input-size", action="store_true",
                        help="dataset images: a square of the config's crop size instead of each image's size")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="a fixed random H x W image instead of dataset images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    return parser


def fixed_square(cfg):
    """The side of the fixed input `--use-fixed-input-size` uses (LSJ image size or crop size)."""
    if cfg.INPUT.get("IMAGE_SIZE"):
        return int(cfg.INPUT.IMAGE_SIZE)
    return int(cfg.INPUT.CROP.SIZE[0])


def model_inputs(cfg, args):
    """Yields single-image batches in the model's input format."""
    if args.input_size:
        height, width = args.input_size
        # The counts depend on the size only: one image is enough.
        image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(0)).float()
        yield [{"image": image, "height": height, "width": width}]
        return
    from detectron2.data import build_detection_test_loader

    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    for index, batch in enumerate(loader):
        if index >= args.num_inputs:
            break
        if args.use_fixed_input_size:
            side = fixed_square(cfg)
            batch = [dict(batch[0], image=torch.zeros(3, side, side), height=side, width=side)]
        yield batch


class _TensorsInTensorsOut(torch.nn.Module):
    """
    The model with one image tensor in and a tuple of tensors out, as fvcore's tracer needs.
    (Detectron2's own adapter lives in detectron2.export, which v0.6 cannot import without caffe2.)
    """

    def __init__(self, model, batch):
        super().__init__()
        self.model = model
        self.fields = {k: v for k, v in batch[0].items() if k != "image"}

    def forward(self, image):
        (output,) = self.model([dict(self.fields, image=image)])
        tensors = []
        for key in sorted(output):
            value = output[key]
            if isinstance(value, Instances):
                tensors += [value.get(name) for name in sorted(value.get_fields()) if torch.is_tensor(value.get(name))]
            elif isinstance(value, tuple):  # (panoptic_seg, segments_info)
                tensors.append(value[0])
            else:
                tensors.append(value)
        return tuple(tensors)


def _baddbmm_flops(inputs, outputs):
    # beta * input + batch1 @ batch2: the product's multiply-adds, like fvcore's bmm formula.
    # (PyTorch's multi-head attention computes its attention logits this way.)
    from fvcore.nn.jit_handles import get_shape

    batch, n, k = get_shape(inputs[1])
    m = get_shape(inputs[2])[2]
    return batch * n * k * m


def _analysis(kind, model, batch):
    analysis = kind(_TensorsInTensorsOut(model, batch), (batch[0]["image"],))
    if kind is FlopCountAnalysis:
        analysis = analysis.set_op_handle("aten::baddbmm", _baddbmm_flops)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def count_flops(model, cfg, args):
    totals, per_operator, unsupported = [], Counter(), Counter()
    for inputs in tqdm.tqdm(list(model_inputs(cfg, args)), desc="flops"):
        analysis = _analysis(FlopCountAnalysis, model, inputs)
        totals.append(analysis.total())
        per_operator.update(analysis.by_operator())
        unsupported.update(analysis.unsupported_ops())
    logger.info("Flops by operator (mean over %d input(s), in G):\n%s", len(totals),
                "\n".join(f"  {op}: {count / len(totals) / 1e9:.3f}" for op, count in per_operator.most_common()))
    if unsupported:
        logger.warning("Operators without a flop formula (not counted): %s", dict(unsupported))
    logger.info("Total GFlops: %.1f ± %.1f", np.mean(totals) / 1e9, np.std(totals) / 1e9)
    return float(np.mean(totals))


def count_activations(model, cfg, args):
    totals = []
    for inputs in tqdm.tqdm(list(model_inputs(cfg, args)), desc="activations"):
        totals.append(_analysis(ActivationCountAnalysis, model, inputs).total() / 1e6)
    logger.info("Total (Million) Activations: %.2f ± %.2f", np.mean(totals), np.std(totals))
    return float(np.mean(totals))


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="mask2former")
    cfg = load_config(args.config_file, args.opts)
    use_cpu_without_cuda(cfg)
    if args.input_size is None and {"flop", "activation"} & set(args.tasks):
        check_inputs(cfg)  # the dataset must be registered
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        Mask2FormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    results = {}
    with torch.no_grad():
        if "parameter" in args.tasks:
            results["parameters"] = parameter_count(model)[""]
            logger.info("Parameter count:\n%s", parameter_count_table(model, max_depth=5))
            logger.info("Total parameters: %.2f M", results["parameters"] / 1e6)
        if "structure" in args.tasks:
            logger.info("Model structure:\n%s", model)
        if "flop" in args.tasks:
            results["flops"] = count_flops(model, cfg, args)
        if "activation" in args.tasks:
            results["activations"] = count_activations(model, cfg, args)
    return results


if __name__ == "__main__":
    main()
