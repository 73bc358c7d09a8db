#!/usr/bin/env python3
"""
Derive semantic labels from the COCO panoptic annotations: for val2017 and train2017, write
coco/panoptic_semseg_<split>/<name>.png holding, for each pixel of a segment listed in
annotations/panoptic_<split>.json, the contiguous class index of its category (0-132, the order of
Detectron2's COCO_CATEGORIES, things and stuff alike) and 255 for every other pixel. These labels
are the `sem_seg_file_name` of `coco_2017_*_panoptic_with_sem_seg`, used to evaluate mIoU.

    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py \
        [--root $DETECTRON2_DATASETS] [--workers N]
"""
import argparse
import functools
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import tqdm
from panopticapi.utils import rgb2id
from PIL import Image

# Run from a source checkout: make `mask2former` (and through it a working Detectron2) importable.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
import mask2former  # noqa: E402,F401  (applies the Detectron2 compatibility layer)
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES  # noqa: E402

SPLITS = ["val2017", "train2017"]


def panoptic_to_semantic(
    panoptic_png: str, semantic_png: str, segments: list, id_map: dict
) -> None:
    panoptic = rgb2id(np.asarray(Image.open(panoptic_png).convert("RGB"), dtype=np.uint32))
    semantic = np.full(panoptic.shape, 255, dtype=np.uint8)
    for segment in segments:
        category_id = segment["category_id"]
        if category_id not in id_map:
            raise ValueError(
                f"{panoptic_png}: segment {segment['id']} has category_id {category_id}, "
                f"which is not a COCO panoptic category"
            )
        semantic[panoptic == segment["id"]] = id_map[category_id]
    Image.fromarray(semantic).save(semantic_png)


def _convert(job, id_map):
    panoptic_to_semantic(*job, id_map=id_map)


def separate_coco_semantic_from_panoptic(
    panoptic_json: str, panoptic_root: str, sem_seg_root: str, categories: list, workers: int = 0
) -> int:
    """
    Write one semantic PNG per annotation of `panoptic_json` into `sem_seg_root`; `categories`
    (dicts with "id") fix the class index of each category id by their order. `workers` > 0
    converts in that many processes. Returns the number of PNGs written.
    """
    for path in (panoptic_json, panoptic_root):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist "
                f"(see the section 'COCO' of datasets/README.md)"
            )
    if len(categories) > 254:
        raise ValueError(
            f"{len(categories)} categories do not fit in 8-bit labels next to 255 (ignore)"
        )
    id_map = {category["id"]: index for index, category in enumerate(categories)}
    os.makedirs(sem_seg_root, exist_ok=True)
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    jobs = [
        (
            os.path.join(panoptic_root, annotation["file_name"]),
            os.path.join(sem_seg_root, annotation["file_name"]),
            annotation["segments_info"],
        )
        for annotation in annotations
    ]
    convert = functools.partial(_convert, id_map=id_map)
    start = time.time()
    progress = tqdm.tqdm(total=len(jobs), desc=os.path.basename(sem_seg_root), unit="image")
    if workers > 0:
        with mp.Pool(processes=workers) as pool:
            for _ in pool.imap_unordered(convert, jobs, chunksize=100):
                progress.update()
    else:
        for job in jobs:
            convert(job)
            progress.update()
    progress.close()
    print(f"Wrote {len(jobs)} semantic PNGs to {sem_seg_root} in {time.time() - start:.1f}s")
    return len(jobs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="folder that contains coco/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(mp.cpu_count() // 2, 1),
        help="worker processes (0: convert in this process)",
    )
    args = parser.parse_args(argv)
    dataset_dir = os.path.join(args.root, "coco")
    for split in SPLITS:
        separate_coco_semantic_from_panoptic(
            os.path.join(dataset_dir, "annotations", f"panoptic_{split}.json"),
            os.path.join(dataset_dir, f"panoptic_{split}"),
            os.path.join(dataset_dir, f"panoptic_semseg_{split}"),
            COCO_CATEGORIES,
            workers=args.workers,
        )


if __name__ == "__main__":
    main()
