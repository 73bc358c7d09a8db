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
from mask2former.data.datasets.categories import ade20k_instance_categories  # noqa: E402

SPLITS = [("train", "training"), ("val", "validation")]


def instance_annotations(
    instance_png: str, image_id: str, semantic_class_of: dict, first_annotation_id: int
) -> list:
    """COCO annotations of the instances of one image, numbered from `first_annotation_id`."""
    if not os.path.isfile(instance_png):
        raise FileNotFoundError(
            f"{instance_png} does not exist "
            f"(see the section 'ADE20K' of datasets/README.md)"
        )
    labels = np.asarray(Image.open(instance_png))
    if labels.dtype != np.uint8 or labels.ndim != 3:
        raise ValueError(
            f"{instance_png}: expected an 8-bit RGB instance label, "
            f"found {labels.dtype} {labels.shape}"
        )
    instance_classes, instance_indices = labels[..., 0], labels[..., 1]
    annotations = []
    for instance_index in np.unique(instance_indices):
        if instance_index == 0:
            continue
        mask = instance_indices == instance_index
        classes = np.unique(instance_classes[mask])
        if len(classes) != 1 or int(classes[0]) not in semantic_class_of:
            raise ValueError(
                f"{instance_png}: instance {instance_index} has class value(s) {classes.tolist()} "
                f"in the R channel; expected exactly one instance class in 1-100"
            )
        rows, cols = np.nonzero(mask)
        rle = mask_util.encode(np.asfortranarray(mask[:, :, None], dtype=np.uint8))[0]
        rle["counts"] = rle["counts"].decode("utf-8")
        annotations.append(
            {
                "id": first_annotation_id + len(annotations),
                "image_id": image_id,
                "iscrowd": 0,
                "category_id": semantic_class_of[int(classes[0])],
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

    instance_categories = ade20k_instance_categories()
    semantic_class_of = {c["instance_id"]: c["ade20k_150_id"] for c in instance_categories}
    categories = [{"id": c["ade20k_150_id"], "name": c["name"]} for c in instance_categories]

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
