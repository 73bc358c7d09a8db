#!/usr/bin/env python3
"""
Make the `coco_2017_{train,test}_stuff_10k_sem_seg` data (171 classes) from the official
COCO-Stuff-10k release (cocostuff-10k-v1.1.zip, unpacked into coco/coco_stuff_10k/):

    coco/coco_stuff_10k/images/<name>.jpg, annotations/<name>.mat, imageLists/{train,test}.txt
 -> coco/coco_stuff_10k/images_detectron2/{train,test}/<name>.jpg
    coco/coco_stuff_10k/annotations_detectron2/{train,test}/<name>.png

The label map `S` of each .mat file becomes the contiguous training label (0-170, the order of
mask2former/data/datasets/categories/coco_stuff_171.json); "unlabeled" and the 11 COCO ids that
have no annotations become 255, the ignore label. Both releases are understood, told apart by the
number of class names stored in each file:
  - v1.1 (182 names): S = 0 is "unlabeled", S = k is the COCO-Stuff id k (1-182);
  - v1.0 (172 names): S = 1 is "unlabeled", S = 2-81 are the 80 COCO thing classes in order and
    S = 82-172 the 91 stuff classes in order.

    python datasets/prepare_coco_stuff_10k_sem_seg.py [--root $DETECTRON2_DATASETS]
"""
import argparse
import functools
import os
import shutil
import sys

import numpy as np
import scipy.io
import tqdm
from PIL import Image

# Run from a source checkout: make `mask2former` importable for its category tables.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from mask2former.data.datasets.categories import coco_stuff_categories  # noqa: E402

SPLITS = ["train", "test"]
IGNORE_LABEL = 255
V1_0_NAME_COUNT = 172
V1_1_NAME_COUNT = 182


@functools.lru_cache(maxsize=None)
def _lookup_table(name_count: int) -> np.ndarray:
    """Maps every possible value of S to its contiguous label (255 where it has none).

    Built once per release and shared by every file; callers only read it.
    """
    table = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    categories = coco_stuff_categories()
    if name_count == V1_1_NAME_COUNT:
        for contiguous, category in enumerate(categories):
            table[category["id"]] = contiguous
    elif name_count == V1_0_NAME_COUNT:
        table[2 : 2 + len(categories)] = np.arange(len(categories))
    else:
        raise ValueError(
            f"{name_count} class names: expected {V1_1_NAME_COUNT} (COCO-Stuff-10k v1.1) "
            f"or {V1_0_NAME_COUNT} (v1.0)"
        )
    return table


def convert_annotation(mat_file: str, output_png: str) -> None:
    try:
        annotation = scipy.io.loadmat(mat_file, variable_names=["S", "names"])
    except NotImplementedError as e:
        raise ValueError(
            f"{mat_file}: MATLAB v7.3 (HDF5) files are not supported; use the official "
            f"cocostuff-10k-v1.1.zip release ({e})"
        ) from None
    except (ValueError, OSError) as e:
        raise ValueError(f"{mat_file}: not a readable COCO-Stuff .mat file ({e})") from None
    if "S" not in annotation or "names" not in annotation:
        raise ValueError(f"{mat_file}: has no label map 'S' and class list 'names'")
    try:
        table = _lookup_table(annotation["names"].size)
    except ValueError as e:
        raise ValueError(f"{mat_file}: {e}") from None
    label_map = annotation["S"]
    if label_map.ndim != 2 or label_map.min() < 0 or label_map.max() >= len(table):
        raise ValueError(
            f"{mat_file}: S must be a 2-D map of values in [0, {len(table) - 1}], found shape "
            f"{label_map.shape} with values {label_map.min()}..{label_map.max()}"
        )
    Image.fromarray(table[label_map.astype(np.int64)]).save(output_png)


def _image_names(dataset_dir: str, split: str) -> list:
    list_file = os.path.join(dataset_dir, "imageLists", split + ".txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(
            f"{list_file} does not exist; unpack cocostuff-10k-v1.1.zip into {dataset_dir} "
            f"(see the section 'COCO-Stuff-10k' of datasets/README.md)"
        )
    with open(list_file) as f:
        return [line.strip() for line in f if line.strip()]


def convert_split(dataset_dir: str, split: str) -> int:
    """Copy the images and convert the labels of one split; returns the number of images."""
    names = _image_names(dataset_dir, split)
    image_dir = os.path.join(dataset_dir, "images_detectron2", split)
    label_dir = os.path.join(dataset_dir, "annotations_detectron2", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for name in tqdm.tqdm(names, desc=f"COCO-Stuff-10k {split}", unit="image"):
        image = os.path.join(dataset_dir, "images", name + ".jpg")
        mat_file = os.path.join(dataset_dir, "annotations", name + ".mat")
        for path in (image, mat_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} (listed in imageLists/{split}.txt) does not exist")
        convert_annotation(mat_file, os.path.join(label_dir, name + ".png"))
        shutil.copyfile(image, os.path.join(image_dir, name + ".jpg"))
    return len(names)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="folder that contains coco/coco_stuff_10k (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    args = parser.parse_args(argv)
    dataset_dir = os.path.join(args.root, "coco", "coco_stuff_10k")
    for split in SPLITS:
        count = convert_split(dataset_dir, split)
        print(f"{split}: wrote {count} images and labels under {dataset_dir}/*_detectron2/{split}")


if __name__ == "__main__":
    main()
