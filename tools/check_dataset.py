#!/usr/bin/env python
"""
Check a dataset's files before training on it: missing or unreadable images and masks, masks of
another size than their image, label values outside the classes, annotations pointing to images
or categories that do not exist. Prints every problem found (the first --max-listed of each
dataset, and a count) and exits with status 1 if there is any.

    # the custom datasets of a config (DATASETS.CUSTOM) and the datasets it trains/tests on:
    python tools/check_dataset.py --config-file my_config.yaml [KEY VALUE ...]
    # a custom dataset spec, without a config:
    python tools/check_dataset.py --spec "name=my_train,type=sem_seg,image_root=...,sem_seg_root=...,classes=classes.yaml"
    # any registered dataset, images or videos:
    python tools/check_dataset.py --dataset synthetic_panoptic_val ytvis_2019_train
    # a video dataset in YouTube-VIS format:
    python tools/check_dataset.py --spec "name=my_vis,type=ytvis,json_file=data/train.json,image_root=data/train/JPEGImages"

Video datasets are checked frame by frame: a video without frames, a missing or unreadable frame,
frames of different sizes in one video, a track with fewer segmentation entries than its video
has frames.
"""
import os
import sys

# Run from anywhere: the repository root holds the mask2former package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  isort: skip  (compatibility layer, dataset registrations)
import mask2former_video.data_video  # noqa: E402,F401  isort: skip  (video datasets, the "ytvis" custom type)

import argparse  # noqa: E402
import logging  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.projects.deeplab import add_deeplab_config  # noqa: E402

from mask2former import add_maskformer2_config  # noqa: E402
from mask2former.data.custom import (  # noqa: E402
    parse_dataset_spec,
    register_custom_datasets,
    validate_custom_dataset,
)
from mask2former.data.validation import (  # noqa: E402
    DatasetValidationError,
    ValidationReport,
    validate_dataset_dicts,
)
from mask2former_video.config import add_maskformer2_video_config  # noqa: E402
from mask2former_video.data_video.validation import (  # noqa: E402
    is_video_dataset,
    validate_video_dataset_dicts,
)


_VIDEO_DATASETS = set()  # names found to hold videos, to count them as videos


def _check_registered(name, max_listed):
    if name not in DatasetCatalog.list():
        raise KeyError(f"Dataset {name!r} is not registered.")
    records = DatasetCatalog.get(name)
    if is_video_dataset(records):
        _VIDEO_DATASETS.add(name)
    validate = validate_video_dataset_dicts if name in _VIDEO_DATASETS else validate_dataset_dicts
    report = validate(records, MetadataCatalog.get(name), name, report=ValidationReport(name))
    report.raise_if_failed(max_listed)
    return len(records)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", help="config whose DATASETS.CUSTOM/TRAIN/TEST are checked")
    parser.add_argument("--spec", nargs="*", default=[], help="custom dataset spec(s) (DATASETS.CUSTOM syntax)")
    parser.add_argument("--dataset", nargs="*", default=[], help="registered dataset name(s)")
    parser.add_argument("--max-listed", type=int, default=20, help="problems listed per dataset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.config_file or args.spec or args.dataset or args.opts):
        parser.error("give --config-file, --spec or --dataset")

    checks = []  # (label, function returning the number of images)
    for text in args.spec:
        spec = parse_dataset_spec(text)
        if spec["type"] == "ytvis":
            _VIDEO_DATASETS.add(spec["name"])
        checks.append((spec["name"], lambda spec=spec: validate_custom_dataset(spec)))
    names = list(args.dataset)
    if args.config_file or args.opts:
        cfg = get_cfg()
        add_deeplab_config(cfg)
        add_maskformer2_config(cfg)
        add_maskformer2_video_config(cfg)  # video configs have a few more keys
        if args.config_file:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        # Registration validates every custom dataset; nothing is registered if one fails.
        checks.append(("DATASETS.CUSTOM", lambda: len(register_custom_datasets(cfg))))
        names += [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if n not in names]
    for name in names:
        checks.append((name, lambda name=name: _check_registered(name, args.max_listed)))

    failed = 0
    for label, check in checks:
        try:
            count = check()
        except (DatasetValidationError, KeyError, ValueError, OSError) as e:
            failed += 1
            print(f"FAILED {label}:\n{e}\n", file=sys.stderr)
        else:
            unit = "datasets" if label == "DATASETS.CUSTOM" else "videos" if label in _VIDEO_DATASETS else "images"
            print(f"OK     {label} ({count} {unit})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
