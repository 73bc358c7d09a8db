"""
A built-in synthetic video instance segmentation dataset in YouTube-VIS format: no download,
deterministic from a seed, generated in seconds.

Each video is a short clip over a static textured background (the stuff textures of the image
dataset, ``mask2former/data/synthetic.py``) in which one to three shapes (disc, box, triangle,
star: the image dataset's things, same colours and ids) move in straight lines and turn. Objects
pass in front of each other (a fixed depth order per video), some enter the frame from outside and
some leave it, so a track can be partly occluded, absent in its first frames or gone in its last.
A track's per-frame annotation is its visible mask (null when fewer than
``MIN_VISIBLE_PIXELS`` pixels are visible).

Layout (like YouTube-VIS) under ``$DETECTRON2_DATASETS/synthetic_vis`` (default
``datasets/synthetic_vis``)::

    {train,valid}/JPEGImages/<video>/<frame>.jpg     {train,valid}.json

registered as ``synthetic_vis_train`` and ``synthetic_vis_val`` (evaluator ``ytvis``), generated on
first load when absent. To make it explicitly::

    python -m mask2former_video.data_video.datasets.synthetic_vis --root datasets/synthetic_vis
"""
import argparse
import json
import logging
import os
import time

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from mask2former.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    _paint_thing,
    _stuff_layout,
    _stuff_texture,
    ensure_dataset,
    shape_mask,
    write_dataset_atomically,
)

from .ytvis import load_ytvis_json, ytvis_metadata_from_categories

__all__ = [
    "SYNTHETIC_VIS_CATEGORIES",
    "DEFAULT_SPLITS",
    "generate",
    "ensure_generated",
    "synthetic_vis_root",
    "register_synthetic_vis",
]

logger = logging.getLogger(__name__)

SYNTHETIC_VIS_CATEGORIES = [
    {k: c[k] for k in ("id", "name", "color", "supercategory")} for c in SYNTHETIC_CATEGORIES if c["isthing"]
]
DEFAULT_SPLITS = {"train": 160, "valid": 40}
DEFAULT_SEED = 0
DEFAULT_HEIGHT = 96
DEFAULT_WIDTH = 128
DEFAULT_LENGTH = 10
MIN_VISIBLE_PIXELS = 15
# Bump when the frames or annotations change, so an old copy on disk is regenerated.
FORMAT_VERSION = 1
_MARKER = "synthetic_vis_dataset.json"
# Registered split name -> folder / json name (YouTube-VIS calls its validation split "valid").
_REGISTERED = {"train": "train", "val": "valid"}


def synthetic_vis_root():
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic_vis")


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def _trajectory(height, width, length, rng):
    """Start centre, velocity (px/frame), radius, start angle and turn rate of one object."""
    radius = rng.uniform(9, 17)
    speed = rng.uniform(2.0, 5.0)
    if rng.uniform() < 0.3:
        # Enters: starts just outside an edge, heading inwards.
        side = int(rng.integers(4))
        along = rng.uniform(0.25, 0.75)
        start = [(-radius, along * height), (width + radius, along * height), (along * width, -radius), (along * width, height + radius)][side]
        heading = [0.0, np.pi, np.pi / 2, -np.pi / 2][side] + rng.uniform(-0.5, 0.5)
    else:
        start = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        heading = rng.uniform(0, 2 * np.pi)
    velocity = (speed * np.cos(heading), speed * np.sin(heading))
    return np.array(start), np.array(velocity), radius, rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.2)


def _draw_video(height, width, length, rng):
    """Frames (T x H x W x 3 uint8) and tracks: (category, list of visible masks or None)."""
    stuff_names, bands = _stuff_layout(height, width, rng)
    background = np.zeros((height, width, 3), dtype=np.float32)
    for band, name in enumerate(stuff_names):
        region = bands == band
        background[region] = _stuff_texture(name, height, width, rng)[region]

    things = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        category = things[int(rng.integers(len(things)))]
        # The object's own generator, re-created every frame, paints it the same way each time.
        paint_seed = int(rng.integers(2**31))
        objects.append((category, _trajectory(height, width, length, rng), paint_seed))

    frames, visible = [], [[] for _ in objects]
    for t in range(length):
        image = background.copy()
        full = []
        for category, (start, velocity, radius, angle, turn), paint_seed in objects:
            mask = shape_mask(category["name"], height, width, start + t * velocity, radius, angle + t * turn)
            full.append(mask)
            if mask.any():
                _paint_thing(image, mask, category, np.random.default_rng(paint_seed))
        # Later objects are in front: what is left of each mask once the later ones are drawn.
        covered = np.zeros((height, width), dtype=bool)
        for i in reversed(range(len(objects))):
            mask = full[i] & ~covered
            covered |= full[i]
            visible[i].append(mask if mask.sum() >= MIN_VISIBLE_PIXELS else None)
        image += rng.normal(0, 3, size=image.shape).astype(np.float32)
        frames.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
    tracks = [(category, masks) for (category, _, _), masks in zip(objects, visible) if any(m is not None for m in masks)]
    return frames, tracks


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _write_split(root, folder, num_videos, seed, height, width, length, first_video_id):
    image_root = os.path.join(root, folder, "JPEGImages")
    seeds = np.random.SeedSequence([seed, sum(map(ord, folder))]).spawn(num_videos)
    videos, annotations = [], []
    for index in range(num_videos):
        rng = np.random.default_rng(seeds[index])
        video_id = first_video_id + index
        name = f"{video_id:05d}"
        os.makedirs(os.path.join(image_root, name), exist_ok=True)
        frames, tracks = _draw_video(height, width, length, rng)
        file_names = []
        for t, frame in enumerate(frames):
            file_names.append(f"{name}/{t:05d}.jpg")
            Image.fromarray(frame).save(os.path.join(image_root, file_names[-1]), quality=95)
        videos.append({"id": video_id, "file_names": file_names, "height": height, "width": width, "length": length})
        for category, masks in tracks:
            segmentations, bboxes, areas = [], [], []
            for mask in masks:
                if mask is None:
                    segmentations.append(None)
                    bboxes.append(None)
                    areas.append(None)
                    continue
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                bboxes.append([float(v) for v in mask_util.toBbox(rle)])
                areas.append(int(mask.sum()))
                rle["counts"] = rle["counts"].decode("ascii")
                segmentations.append(rle)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "video_id": video_id,
                    "category_id": category["id"],
                    "iscrowd": 0,
                    "segmentations": segmentations,
                    "bboxes": bboxes,
                    "areas": areas,
                }
            )
    content = {
        "info": {"description": f"Mask2Former synthetic video dataset, split {folder}, seed {seed}"},
        "videos": videos,
        "annotations": annotations,
        "categories": SYNTHETIC_VIS_CATEGORIES,
    }
    with open(os.path.join(root, f"{folder}.json"), "w") as f:
        json.dump(content, f)


def generate(root, seed=DEFAULT_SEED, splits=None, height=DEFAULT_HEIGHT, width=DEFAULT_WIDTH, length=DEFAULT_LENGTH, overwrite=True):
    """
    Write the dataset to `root` (``splits``: folder name -> number of videos). Written to a
    temporary folder first and moved into place, so no half-written dataset is ever seen.
    """
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    start = time.perf_counter()

    def write_splits(staging):
        first_video_id = 1
        for folder, num_videos in splits.items():
            _write_split(staging, folder, num_videos, seed, height, width, length, first_video_id)
            first_video_id += num_videos

    marker = {"version": FORMAT_VERSION, "seed": seed, "splits": splits, "height": height, "width": width, "length": length}
    root = write_dataset_atomically(root, ".synthetic_vis-", write_splits, _MARKER, marker, overwrite)
    logger.info("Generated the synthetic video dataset (%s) in %s in %.1f s", splits, root, time.perf_counter() - start)
    return root


def ensure_generated(root, folders=("train", "valid")):
    """A complete dataset with these splits in `root`: kept if there, else the default one is made."""
    return ensure_dataset(
        root, _MARKER, FORMAT_VERSION, folders, lambda: generate(root, overwrite=False),
        "synthetic video dataset", "python -m mask2former_video.data_video.datasets.synthetic_vis",
    )


def register_synthetic_vis(root=None, prefix="synthetic_vis"):
    """Register ``{prefix}_train`` and ``{prefix}_val``; nothing is read or made until first loaded."""
    root = synthetic_vis_root() if root is None else root
    metadata = ytvis_metadata_from_categories(SYNTHETIC_VIS_CATEGORIES)
    names = []
    for split, folder in _REGISTERED.items():
        name = f"{prefix}_{split}"
        json_file = os.path.join(root, f"{folder}.json")
        image_root = os.path.join(root, folder, "JPEGImages")

        def load(json_file=json_file, image_root=image_root, name=name):
            ensure_generated(root)
            return load_ytvis_json(json_file, image_root, name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="ytvis", **metadata)
        names.append(name)
    return names


def _main():
    parser = argparse.ArgumentParser(description="Generate the built-in synthetic video dataset.")
    parser.add_argument("--root", default=synthetic_vis_root(), help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPLITS["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPLITS["valid"])
    parser.add_argument("--length", type=int, default=DEFAULT_LENGTH, help="frames per video")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.root, seed=args.seed, splits={"train": args.num_train, "valid": args.num_val}, length=args.length)


if __name__ == "__main__":
    _main()
else:
    register_synthetic_vis()
