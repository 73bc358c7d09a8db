#!/usr/bin/env python3
"""
Convert the ADE20K instance labels (annotations_instance/, R = instance class 1-100,
G = instance index, 0 = none) into COCO-format instance annotations with RLE masks for
`ade20k_instance_{train,val}`:

    ADEChallengeData2016/ade20k_instance_{train,val}.json

Category ids are the ADE20K-150 class indices of the 100 thing classes, the same ids as in the
panoptic annotations of prepare_ade20k_pan_seg.py.

    python datasets/prepare_ade20k_ins_seg.py [--root $DETECTRON2_DATASETS]
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import tqdm
from PIL import Image

# Run from a source checkout: make `mask2former` importable for its category tables.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from mask2former.data.datasets.ade20k_instance_labels import (  # noqa: E402
    instance_to_semantic_class,
    read_ade20k_instances,
)
from mask2former.data.datasets.categories import ade20k_instance_categories  # noqa: E402

SPLITS = [("train", "training"), ("val", "validation")]


def instance_annotations(
    instance_png: str, image_id: str, semantic_class_of: dict, first_annotation_id: int
) -> list:
    """COCO annotations of the instances of one image, numbered from `first_annotation_id`."""
    annotations = []
    for mask, category_id in read_ade20k_instances(instance_png, semantic_class_of):
        rows, cols = np.nonzero(mask)
        rle = mask_util.encode(np.asfortranarray(mask[:, :, None], dtype=np.uint8))[0]
        rle["counts"] = rle["counts"].decode("utf-8")
        annotations.append(
            {
                "id": first_annotation_id + len(annotations),
                "image_id": image_id,
                "iscrowd": 0,
                "category_id": category_id,
                "bbox": [
                    int(cols.min()),
                    int(rows.min()),
                    int(cols.max() - cols.min() + 1),
                    int(rows.max() - rows.min() + 1),
                ],
                "segmentation": rle,
                "area": int(mask_util.area(rle)),
            }
        )
    return annotations


def convert_split(dataset_dir: str, name: str, dirname: str) -> dict:
    """Write the instance json of one split; returns its content."""
    image_dir = os.path.join(dataset_dir, "images", dirname)
    instance_dir = os.path.join(dataset_dir, "annotations_instance", dirname)
    output_json = os.path.join(dataset_dir, f"ade20k_instance_{name}.json")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(
            f"{image_dir} does not exist "
            f"(see the section 'ADE20K' of datasets/README.md)"
        )

    semantic_class_of = instance_to_semantic_class()
    categories = [{"id": c["ade20k_150_id"], "name": c["name"]} for c in ade20k_instance_categories()]

    images, annotations = [], []
    image_paths = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    for image_path in tqdm.tqdm(image_paths, desc=f"ADE20K {name}", unit="image"):
        file_name = os.path.basename(image_path)
        image_id = file_name.split(".")[0]
        width, height = Image.open(image_path).size
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        annotations += instance_annotations(
            os.path.join(instance_dir, image_id + ".png"),
            image_id,
            semantic_class_of,
            first_annotation_id=len(annotations) + 1,
        )

    content = {"images": images, "categories": categories, "annotations": annotations}
    with open(output_json, "w") as f:
        json.dump(content, f)
    print(f"{name}: wrote {len(annotations)} instances of {len(images)} images to {output_json}")
    return content


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
    for name, dirname in SPLITS:
        convert_split(os.path.join(args.root, "ADEChallengeData2016"), name, dirname)


if __name__ == "__main__":
    main()
