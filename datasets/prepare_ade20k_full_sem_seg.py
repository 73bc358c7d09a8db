#!/usr/bin/env python3
"""
Make the `ade20k_full_sem_seg_{train,val}` data (847 classes) from ADE20K_2021_17_01:

    ADE20K_2021_17_01/images_detectron2/{training,validation}/<name>.jpg
    ADE20K_2021_17_01/annotations_detectron2/{training,validation}/<name>.tif

Every image listed in index_ade20k.pkl is resized so that its shorter side is at most 512 pixels
(bilinear for the image, nearest for the labels). Its object classes, decoded from the dataset's
<name>_seg.png (class = (R // 10) * 256 + G), become the training labels 0-846 of
mask2former/data/datasets/categories/ade20k_full_847.json; every other pixel becomes 65535, the
ignore label. Labels are written as 16-bit TIFFs.

    python datasets/prepare_ade20k_full_sem_seg.py [--root $DETECTRON2_DATASETS]
"""
import argparse
import os
import sys

import cv2
import numpy as np
import tqdm
from PIL import Image

# Run from a source checkout: make `mask2former` importable for its category tables.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from mask2former.data.datasets.categories import ade20k_full_categories  # noqa: E402
from mask2former.utils.safe_pickle import safe_load_pickle  # noqa: E402

MAX_SHORT_SIDE = 512
IGNORE_LABEL = 65535


def object_classes(seg_png: str) -> np.ndarray:
    """The ADE20K object class of every pixel, decoded from the R and G channels of a *_seg.png."""
    if not os.path.isfile(seg_png):
        raise FileNotFoundError(
            f"{seg_png} does not exist "
            f"(see the section 'ADE20K-full' of datasets/README.md)"
        )
    seg = np.asarray(Image.open(seg_png).convert("RGB")).astype(np.int32)
    return seg[..., 0] // 10 * 256 + seg[..., 1]


def resized_shape(height: int, width: int):
    """(height, width) with the shorter side brought down to MAX_SHORT_SIDE, or None."""
    if width >= height > MAX_SHORT_SIDE:
        return MAX_SHORT_SIDE, round(width / height * MAX_SHORT_SIDE)
    if height >= width > MAX_SHORT_SIDE:
        return round(height / width * MAX_SHORT_SIDE), MAX_SHORT_SIDE
    return None


def convert_image(image_jpg: str, output_jpg: str, output_tif: str, train_id_of: dict) -> None:
    image = np.asarray(Image.open(image_jpg).convert("RGB"))
    classes = object_classes(image_jpg[: -len(".jpg")] + "_seg.png")
    if classes.shape != image.shape[:2]:
        raise ValueError(
            f"{image_jpg}: image is {image.shape[:2]} but its _seg.png is {classes.shape}"
        )
    shape = resized_shape(*image.shape[:2])
    if shape is not None:
        image = cv2.resize(image, shape[::-1], interpolation=cv2.INTER_LINEAR)
        classes = cv2.resize(classes, shape[::-1], interpolation=cv2.INTER_NEAREST)
    labels = np.full(classes.shape, IGNORE_LABEL, dtype=np.uint16)
    for object_class in np.unique(classes):
        if object_class in train_id_of:
            labels[classes == object_class] = train_id_of[object_class]
    Image.fromarray(image).save(output_jpg)
    Image.fromarray(labels).save(output_tif)


def convert(root: str) -> int:
    """Convert every image of index_ade20k.pkl; returns how many were written."""
    dataset_dir = os.path.join(root, "ADE20K_2021_17_01")
    index_file = os.path.join(dataset_dir, "index_ade20k.pkl")
    if not os.path.isfile(index_file):
        raise FileNotFoundError(
            f"{index_file} does not exist "
            f"(see the section 'ADE20K-full' of datasets/README.md)"
        )
    # A downloaded index is plain data (lists, strings, arrays): refuse any code it names.
    index = safe_load_pickle(index_file)
    train_id_of = {
        category["id"]: train_id for train_id, category in enumerate(ade20k_full_categories())
    }
    for split in ["training", "validation"]:
        os.makedirs(os.path.join(dataset_dir, "images_detectron2", split), exist_ok=True)
        os.makedirs(os.path.join(dataset_dir, "annotations_detectron2", split), exist_ok=True)

    entries = list(zip(index["folder"], index["filename"]))
    for folder, file_name in tqdm.tqdm(entries, desc="ADE20K-full", unit="image"):
        # File names are ADE_train_*.jpg or ADE_val_*.jpg.
        split = "validation" if file_name.split("_")[1] == "val" else "training"
        convert_image(
            os.path.join(root, folder, file_name),
            os.path.join(dataset_dir, "images_detectron2", split, file_name),
            os.path.join(
                dataset_dir, "annotations_detectron2", split, file_name[: -len(".jpg")] + ".tif"
            ),
            train_id_of,
        )
    return len(entries)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="folder that contains ADE20K_2021_17_01 "
        "(default: $DETECTRON2_DATASETS or ./datasets)",
    )
    args = parser.parse_args(argv)
    count = convert(args.root)
    print(f"Wrote {count} images and labels under {os.path.join(args.root, 'ADE20K_2021_17_01')}")


if __name__ == "__main__":
    main()
