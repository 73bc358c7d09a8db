#!/usr/bin/env python
"""Convert Swin Transformer ImageNet weights (also the ones SeMask-Swin starts from) for Detectron2.

    python tools/convert-pretrained-swin-model-to-d2.py swin_large_patch4_window12_384_22k.pth \
        swin_large_patch4_window12_384_22k.pkl

Names are kept ("layers.0.blocks.0.attn.qkv.weight", ...): the Swin and SeMask-Swin backbones use
the original names, and Detectron2's matching heuristics add the "backbone." prefix and skip the
classifier ("head.*", "norm.*"). The semantic layers of SeMask-Swin are not in ImageNet weights and
start from their initialisation.
"""
import sys

from checkpoint_conversion import run


def convert(state_dict):
    return dict(state_dict)


if __name__ == "__main__":
    sys.exit(run(sys.argv, convert, "third_party", __doc__))
