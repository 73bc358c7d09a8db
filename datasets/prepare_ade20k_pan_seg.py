#!/usr/bin/env python3
"""
Combine the ADE20K semantic labels (annotations/) and instance labels (annotations_instance/) into
COCO-panoptic-format annotations for `ade20k_panoptic_{train,val}`:

    ADEChallengeData2016/ade20k_panoptic_{train,val}/<image id>.png
        panoptic PNGs, segment id = R + 256 G + 256^2 B
    ADEChallengeData2016/ade20k_panoptic_{train,val}.json
        images, annotations (segments_info) and the 150 categories

Stuff segments come from the semantic labels of the 50 stuff classes, one per class present;
thing segments from the instance labels, one per instance, painted over the stuff. Category ids
are the ADE20K-150 class indices (0-149).

    python datasets/prepare_ade20k_pan_seg.py [--root $DETECTRON2_DATASETS]
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import tqdm
from panopticapi.utils import IdGenerator
from PIL import Image

# Run from a source checkout: make `mask2former` importable for its category tables.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from mask2former.data.datasets.ade20k_instance_labels import (  # noqa: E402
    instance_to_semantic_class,
    read_ade20k_instances,
)
from mask2former.data.datasets.categories import ade20k_150_categories  # noqa: E402

SPLITS = [("train", "training"), ("val", "validation")]

# "road, route" (6) and "skyscraper" (48) share the colour (140, 140, 140) in the ADE20K palette;
# stuff segment ids are their class colours, so skyscraper is given another one (as upstream
# Mask2Former's panoptic annotations do) to keep the two classes' segment ids apart.
_PANOPTIC_COLOR_OVERRIDES = {48: [140, 140, 200]}


def panoptic_categories() -> list:
    """The 150 categories written into the panoptic json: id, name, isthing, color."""
    categories = ade20k_150_categories()
    for category in categories:
        category["color"] = _PANOPTIC_COLOR_OVERRIDES.get(category["id"], category["color"])
    return categories


def _bbox(mask: np.ndarray) -> list:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _read_uint8(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist "
            f"(see the section 'ADE20K' of datasets/README.md)"
        )
    array = np.asarray(Image.open(path))
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit labels, found {array.dtype}")
    return array


def make_panoptic_annotation(
    semantic_png: str, instance_png: str, categories: dict, semantic_class_of: dict
):
    """Returns (panoptic RGB image, segments_info) of one image."""
    semantic_classes = _read_uint8(semantic_png) - np.uint8(1)  # raw 0 (unlabeled) wraps to 255
    unknown = sorted(set(np.unique(semantic_classes).tolist()) - set(categories) - {255})
    if unknown:
        raise ValueError(
            f"{semantic_png}: raw label values {[v + 1 for v in unknown]} "
            f"are not ADE20K classes (1-150)"
        )
    id_generator = IdGenerator(categories)
    panoptic = np.zeros(semantic_classes.shape + (3,), dtype=np.uint8)
    segments = []

    def add_segment(mask: np.ndarray, category_id: int) -> None:
        segment_id, color = id_generator.get_id_and_color(category_id)
        panoptic[mask] = color
        segments.append(
            {
                "id": int(segment_id),
                "category_id": int(category_id),
                "area": int(mask.sum()),
                "bbox": _bbox(mask),
                "iscrowd": 0,
            }
        )

    # Stuff first: the instance annotations overlap the semantic ones, and things must win.
    for category_id in np.unique(semantic_classes):
        if category_id != 255 and not categories[int(category_id)]["isthing"]:
            add_segment(semantic_classes == category_id, int(category_id))

    for mask, category_id in read_ade20k_instances(instance_png, semantic_class_of):
        add_segment(mask, category_id)
    return panoptic, segments


def convert_split(dataset_dir: str, name: str, dirname: str) -> dict:
    """Write the panoptic PNGs and json of one split; returns the json content."""
    image_dir = os.path.join(dataset_dir, "images", dirname)
    semantic_dir = os.path.join(dataset_dir, "annotations", dirname)
    instance_dir = os.path.join(dataset_dir, "annotations_instance", dirname)
    output_dir = os.path.join(dataset_dir, f"ade20k_panoptic_{name}")
    output_json = os.path.join(dataset_dir, f"ade20k_panoptic_{name}.json")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(
            f"{image_dir} does not exist "
            f"(see the section 'ADE20K' of datasets/README.md)"
        )
    os.makedirs(output_dir, exist_ok=True)

    category_list = panoptic_categories()
    categories = {c["id"]: c for c in category_list}
    semantic_class_of = instance_to_semantic_class()
    # Thing colours after the first instance of a class are drawn at random by panopticapi's
    # IdGenerator; seeding makes the output reproducible.
    np.random.seed(0)

    images, annotations = [], []
    image_paths = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    for image_path in tqdm.tqdm(image_paths, desc=f"ADE20K {name}", unit="image"):
        file_name = os.path.basename(image_path)
        image_id = file_name.split(".")[0]
        width, height = Image.open(image_path).size
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        panoptic, segments = make_panoptic_annotation(
            os.path.join(semantic_dir, image_id + ".png"),
            os.path.join(instance_dir, image_id + ".png"),
            categories,
            semantic_class_of,
        )
        Image.fromarray(panoptic).save(os.path.join(output_dir, image_id + ".png"))
        annotations.append(
            {"image_id": image_id, "file_name": image_id + ".png", "segments_info": segments}
        )

    content = {"images": images, "annotations": annotations, "categories": category_list}
    with open(output_json, "w") as f:
        json.dump(content, f)
    print(f"{name}: wrote {len(images)} panoptic PNGs to {output_dir} and {output_json}")
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
