#!/usr/bin/env python3
"""
Make ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png from the raw ADE20K
labels: raw label k (1-150) becomes class k - 1 (0-149) and raw 0 ("unlabeled") becomes 255, the
ignore label of the `ade20k_sem_seg_*` and `ade20k_panoptic_*` datasets.

    python datasets/prepare_ade20k_sem_seg.py [--root $DETECTRON2_DATASETS]
"""
import argparse
import os

import numpy as np
import tqdm
from PIL import Image

SPLITS = ["training", "validation"]


def convert_label_file(raw_label_png: str, output_png: str) -> None:
    raw = np.asarray(Image.open(raw_label_png))
    if raw.dtype != np.uint8:
        raise ValueError(f"{raw_label_png}: expected 8-bit ADE20K labels, found {raw.dtype}")
    # uint8 arithmetic wraps 0 ("unlabeled") to 255 and shifts every class down by one.
    Image.fromarray(raw - np.uint8(1)).save(output_png)


def convert_split(dataset_dir: str, split: str) -> int:
    """Convert every PNG of annotations/<split>; returns the number of files written."""
    annotation_dir = os.path.join(dataset_dir, "annotations", split)
    output_dir = os.path.join(dataset_dir, "annotations_detectron2", split)
    if not os.path.isdir(annotation_dir):
        raise FileNotFoundError(
            f"{annotation_dir} does not exist; expected the ADE20K label PNGs there "
            f"(see the section 'ADE20K' of datasets/README.md)"
        )
    os.makedirs(output_dir, exist_ok=True)
    files = sorted(f for f in os.listdir(annotation_dir) if f.endswith(".png"))
    for file_name in tqdm.tqdm(files, desc=f"ADE20K {split}", unit="label"):
        convert_label_file(
            os.path.join(annotation_dir, file_name), os.path.join(output_dir, file_name)
        )
    return len(files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="folder that contains ADEChallengeData2016 "
        "(default: $DETECTRON2_DATASETS or ./datasets)",
    )
    args = parser.parse_args(argv)
    dataset_dir = os.path.join(args.root, "ADEChallengeData2016")
    for split in SPLITS:
        count = convert_split(dataset_dir, split)
        output_dir = os.path.join(dataset_dir, "annotations_detectron2", split)
        print(f"{split}: wrote {count} labels to {output_dir}")


if __name__ == "__main__":
    main()
