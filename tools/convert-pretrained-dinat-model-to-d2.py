#!/usr/bin/env python
"""Convert DiNAT ImageNet weights for Detectron2.

    python tools/convert-pretrained-dinat-model-to-d2.py dinat_large_in22k_224.pth dinat_large_in22k_224.pkl

Names are kept ("patch_embed.proj.0.weight", "levels.0.blocks.0.attn.rpb", ...): `D2DiNAT` uses
the original names and Detectron2's matching heuristics add the "backbone." prefix and skip the
classifier ("head.*", "norm.*"). Files holding a "model" or "state_dict" entry are unwrapped.
"""
import sys

from checkpoint_conversion import run


def convert(state_dict):
    return dict(state_dict)


if __name__ == "__main__":
    sys.exit(run(sys.argv, convert, "third_party", __doc__))
