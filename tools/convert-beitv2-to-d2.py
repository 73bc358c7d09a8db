#!/usr/bin/env python
"""Convert BEiT / BEiTv2 ImageNet weights into the initialisation of the ViT-Adapter backbone.

    python tools/convert-beitv2-to-d2.py beitv2_large_patch16_224_pt1k_ft21k.pth \
        beitv2_large_patch16_224_pt1k_ft21k.pkl

The ViT entries get the prefix "backbone."; the class token, final norm, classifier and relative
position indices are dropped (the detector has none of them or recomputes them), and each block's
relative-position table loses its class-token rows and is resampled to that block's window
(MODEL.VIT_ADAPTER.WINDOW_SIZE of --config-file: 14 -> 27x27 offsets, kept; 56 -> 111x111,
interpolated as BEiT and ViT-Adapter do). Names and shapes are checked against the configured
backbone; unknown entries stop the conversion. The adapter and the head start from their
initialisation (the trainer reports them as missing from MODEL.WEIGHTS).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from checkpoint_conversion import load_state_dict, save_d2_checkpoint  # noqa: E402
from vit_adapter_checkpoints import (  # noqa: E402
    ConversionError,
    build_meta_model,
    check_layout,
    convert_beit,
    converter_parser,
)


def main(argv=None):
    parser = converter_parser(__doc__, "BEiT / BEiTv2 checkpoint (.pth)", "backbone")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    try:
        cfg, model = build_meta_model(args.config_file, args.opts)
        windows = cfg.MODEL.VIT_ADAPTER.WINDOW_SIZE
        depth = cfg.MODEL.VIT_ADAPTER.DEPTH
        windows = list(windows) if isinstance(windows, (list, tuple)) else [windows] * depth
        converted = convert_beit(load_state_dict(args.input), windows)
        check_layout(converted, model, prefix="backbone.", require_all=False)
    except ConversionError as e:
        print(f"{args.input}: {e}", file=sys.stderr)
        return 1
    save_d2_checkpoint(dict(converted), args.output, "BEiT ImageNet weights, converted")
    print(f"Wrote {len(converted)} backbone entries to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
