#!/usr/bin/env python
"""Convert ViT-Adapter's MMDetection Mask2Former checkpoint (COCO panoptic) for this repository.

    python tools/convert-vit-adapter-mmdet-to-d2.py \
        mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic.pth \
        maskformer2_beitv2_adapter_large_16x1_3x.pkl

Every entry is renamed (the backbone keeps its names; the pixel decoder, transformer decoder and
embeddings of MMDetection's Mask2FormerHead take ours), the classifier rows are put in our class order
(checked against the dataset's metadata; for COCO panoptic it is the same order), and the result is
compared, names and shapes, with the model of --config-file before anything is written. An entry
that nothing maps, or a checkpoint of another ViT size or adapter layout, stops the conversion with
the entries named.

Weights: MMDetection's EMA hook stores averaged copies as ema_* entries; with an iteration-based
runner it never swaps them in, and the test script loads the checkpoint non-strictly, ignoring them,
so the published numbers are those of the live weights, which are converted by default
(--weights ema takes the averages instead).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from checkpoint_conversion import load_state_dict, save_d2_checkpoint  # noqa: E402
from vit_adapter_checkpoints import (  # noqa: E402
    ConversionError,
    build_meta_model,
    check_layout,
    class_permutation,
    convert_mmdet,
    converter_parser,
)


def main(argv=None):
    parser = converter_parser(__doc__, "MMDetection checkpoint (.pth)", "model")
    parser.add_argument("--weights", choices=("live", "ema"), default="live")
    parser.add_argument(
        "--keep-class-order",
        action="store_true",
        help="the classifier is already in the dataset's class order (a dataset other than COCO panoptic)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not list every mapped entry")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)

    def log(message):
        if not (args.quiet and message.startswith("  ")):
            print(message)

    try:
        cfg, model = build_meta_model(args.config_file, args.opts)
        from detectron2.data import MetadataCatalog

        class_perm = None
        if not args.keep_class_order:
            metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else cfg.DATASETS.TRAIN[0])
            class_perm = class_permutation(metadata.get("stuff_dataset_id_to_contiguous_id", {}))
        state_dict = load_state_dict(args.input)
        converted = convert_mmdet(
            state_dict,
            class_perm=class_perm,
            use_ema=args.weights == "ema",
            no_object_weight=cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT,
            log=log,
        )
        check_layout(converted, model)
    except ConversionError as e:
        print(f"{args.input}: {e}", file=sys.stderr)
        return 1
    save_d2_checkpoint(dict(converted), args.output, "ViT-Adapter (MMDetection), converted")
    print(f"Mapped all {len(converted) - 1} model entries (+ criterion.empty_weight); wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
