"""A built-in synthetic panoptic dataset: no download, deterministic from a seed, a few seconds to make.

Each image is split into two or three bands of textured "stuff" (sky, grass, brick, water) with wavy
borders, and one to five "thing" objects drawn on top (disc, box, triangle, star), some of them
occluding others. The class of every pixel follows from clear cues, so a small model learns it fast:

* things: the shape AND the colour name the class (each class has its own hue; the brightness,
  size, rotation and shading vary per object), and a dark outline separates touching objects;
* stuff: the texture and colour name the class (smooth blue gradient, green noise, brown bricks,
  teal waves).

Every object keeps at least 60% of its area visible, so occluded objects are still findable.

The dataset is written like COCO (``annotations/panoptic_{split}.json`` with PNGs in
``panoptic_{split}/``, the semantic PNGs derived from it in ``panoptic_semseg_{split}/`` and a COCO
instance json ``annotations/instances_{split}.json`` with RLE masks) and registered as

* ``synthetic_panoptic_{train,val}``: panoptic (evaluator ``coco_panoptic_seg``; the records also
  carry ``sem_seg_file_name`` and the metadata ``json_file``, so semantic and instance evaluation
  work on them too);
* ``synthetic_sem_seg_{train,val}``: semantic (evaluator ``sem_seg``);
* ``synthetic_instance_{train,val}``: instance (evaluator ``coco``).

The data lives in ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``) and is
generated on first load when absent. To make it explicitly::

    python -m mask2former.data.synthetic --root datasets/synthetic --seed 0
"""
import argparse
import json
import logging
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from .custom import (
    load_coco_instance_json,
    load_coco_panoptic_json,
    load_sem_seg_folder,
    panoptic_metadata_from_categories,
)

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "DEFAULT_SPLITS",
    "generate",
    "ensure_generated",
    "synthetic_root",
    "register_synthetic",
    "write_preview",
]

logger = logging.getLogger(__name__)

# Things first, so that a thing's index in `thing_classes` equals its contiguous id (as in COCO).
# Dataset ids are not contiguous on purpose: code must go through the id maps, as with COCO.
SYNTHETIC_CATEGORIES = [
    {"id": 1, "name": "disc", "isthing": 1, "color": [220, 40, 40], "supercategory": "shape"},
    {"id": 2, "name": "box", "isthing": 1, "color": [245, 200, 20], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [190, 40, 210], "supercategory": "shape"},
    {"id": 4, "name": "star", "isthing": 1, "color": [240, 240, 240], "supercategory": "shape"},
    {"id": 11, "name": "sky", "isthing": 0, "color": [80, 140, 230], "supercategory": "background"},
    {"id": 12, "name": "grass", "isthing": 0, "color": [50, 150, 50], "supercategory": "background"},
    {"id": 13, "name": "brick", "isthing": 0, "color": [150, 80, 45], "supercategory": "background"},
    {"id": 14, "name": "water", "isthing": 0, "color": [20, 165, 165], "supercategory": "background"},
]
_THINGS = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
_STUFF = [c for c in SYNTHETIC_CATEGORIES if not c["isthing"]]

DEFAULT_SPLITS = {"train": 400, "val": 100}
DEFAULT_SEED = 0
DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 160
IGNORE_LABEL = 255
LABEL_DIVISOR = 1000
# Bump when the images or annotations change, so an old copy on disk is regenerated.
FORMAT_VERSION = 1
_MARKER = "synthetic_dataset.json"

_MIN_VISIBLE_FRACTION = 0.6
_MIN_VISIBLE_PIXELS = 60


def synthetic_root():
    """Where the registered synthetic datasets live: ``$DETECTRON2_DATASETS/synthetic``."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic")


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def _stuff_texture(name, height, width, rng):
    """An RGB float image of one stuff class, covering the whole canvas (masked later)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(next(c["color"] for c in _STUFF if c["name"] == name), dtype=np.float32)
    base = base + rng.uniform(-15, 15, size=3)
    if name == "sky":
        # Smooth vertical gradient: brighter towards the bottom.
        shade = 40.0 * ys / height - 20.0
        img = base[None, None, :] + shade[..., None]
    elif name == "grass":
        # Coarse pixel noise in the green channel mostly.
        noise = rng.normal(0, 1, size=(height, width)).astype(np.float32)
        img = base[None, None, :] + noise[..., None] * np.array([12, 30, 12], dtype=np.float32)
    elif name == "brick":
        # Bricks of 8x16 px in staggered rows, separated by light mortar.
        brick_h, brick_w = 8, 16
        offset = rng.integers(0, brick_w)
        row = (ys // brick_h).astype(np.int64)
        shifted_x = xs + offset + (row % 2) * (brick_w // 2)
        mortar = (ys % brick_h < 1.5) | (shifted_x % brick_w < 1.5)
        img = np.broadcast_to(base, (height, width, 3)).copy()
        img[mortar] = (210, 200, 190)
    elif name == "water":
        # Horizontal waves.
        period = rng.uniform(6, 10)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * ys / period + phase + 0.3 * np.sin(xs / 7.0))
        img = base[None, None, :] + wave[..., None] * np.array([10, 35, 35], dtype=np.float32)
    else:
        raise KeyError(name)
    return img


def _stuff_layout(height, width, rng):
    """Split the canvas into 2-3 horizontal bands with wavy borders; returns (names, band index map)."""
    num_bands = int(rng.integers(2, 4))
    names = [_STUFF[i]["name"] for i in rng.permutation(len(_STUFF))[:num_bands]]
    cuts = np.sort(rng.uniform(0.25, 0.75, size=num_bands - 1)) * height
    if num_bands == 3 and cuts[1] - cuts[0] < 0.2 * height:
        cuts[1] = cuts[0] + 0.2 * height
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    bands = np.zeros((height, width), dtype=np.int64)
    for cut in cuts:
        amplitude = rng.uniform(2, 8)
        period = rng.uniform(30, 90)
        phase = rng.uniform(0, 2 * np.pi)
        border = cut + amplitude * np.sin(2 * np.pi * xs / period + phase)
        bands += (ys >= border[None, :]).astype(np.int64)
    return names, bands


def _regular_polygon(center, radius, num_vertices, angle, inner_radius=None):
    angles = angle + np.arange(num_vertices * (2 if inner_radius else 1)) * np.pi / (
        num_vertices if inner_radius else num_vertices / 2
    )
    radii = np.full(len(angles), radius, dtype=np.float64)
    if inner_radius:
        radii[1::2] = inner_radius
    points = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
    return np.round(points).astype(np.int32)


def _thing_mask(shape_name, height, width, rng):
    """A binary mask of one object of the given class at a random place, size and rotation."""
    size = rng.uniform(18, 46)
    radius = size / 2
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    angle = rng.uniform(0, 2 * np.pi)
    return shape_mask(shape_name, height, width, (cx, cy), radius, angle)


def shape_mask(shape_name, height, width, center, radius, angle):
    """A binary mask of one shape of class `shape_name` (also drawn by the synthetic video dataset)."""
    cx, cy = center
    mask = np.zeros((height, width), dtype=np.uint8)
    if shape_name == "disc":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius)), 1, thickness=-1)
    elif shape_name == "box":
        cv2.fillPoly(mask, [_regular_polygon((cx, cy), radius * 1.2, 4, angle)], 1)
    elif shape_name == "triangle":
        cv2.fillPoly(mask, [_regular_polygon((cx, cy), radius * 1.3, 3, angle)], 1)
    elif shape_name == "star":
        cv2.fillPoly(mask, [_regular_polygon((cx, cy), radius * 1.3, 5, angle, radius * 0.55)], 1)
    else:
        raise KeyError(shape_name)
    return mask.astype(bool)


def _paint_thing(image, mask, category, rng):
    """Flat class colour with a per-object brightness and a soft shading gradient, dark outline."""
    color = np.array(category["color"], dtype=np.float32) * rng.uniform(0.8, 1.05)
    ys, xs = np.nonzero(mask)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-6
    span = max(np.ptp(xs), np.ptp(ys), 1)
    shade = ((xs - xs.mean()) * direction[0] + (ys - ys.mean()) * direction[1]) / span * 30.0
    image[ys, xs] = color[None, :] + shade[:, None]
    outline = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    image[outline] = color * 0.35


def _draw_image(height, width, rng):
    """Returns (RGB uint8 image, segment id map, segments) for one synthetic image."""
    image = np.zeros((height, width, 3), dtype=np.float32)
    segment_map = np.zeros((height, width), dtype=np.int64)
    segments = []  # dicts: id, category_id, iscrowd

    stuff_names, bands = _stuff_layout(height, width, rng)
    for band, name in enumerate(stuff_names):
        category = next(c for c in _STUFF if c["name"] == name)
        region = bands == band
        if not region.any():
            continue
        image[region] = _stuff_texture(name, height, width, rng)[region]
        segment_id = category["id"] * LABEL_DIVISOR
        segment_map[region] = segment_id
        segments.append({"id": segment_id, "category_id": category["id"], "iscrowd": 0})

    # Objects are placed one by one; a placement is refused if it hides too much of any object.
    num_things = int(rng.integers(1, 6))
    thing_masks = []  # full (unoccluded) masks, in drawing order
    thing_categories = []
    for _ in range(num_things):
        for _attempt in range(20):
            category = _THINGS[int(rng.integers(len(_THINGS)))]
            mask = _thing_mask(category["name"], height, width, rng)
            visible_before = [m & ~mask for m in _visible_masks(thing_masks)]
            if all(
                v.sum() >= _MIN_VISIBLE_FRACTION * m.sum() and v.sum() >= _MIN_VISIBLE_PIXELS
                for v, m in zip(visible_before, thing_masks)
            ):
                thing_masks.append(mask)
                thing_categories.append(category)
                break

    instance_count = {}
    for mask, category in zip(thing_masks, thing_categories):
        _paint_thing(image, mask, category, rng)
        instance_count[category["id"]] = instance_count.get(category["id"], 0) + 1
        segment_id = category["id"] * LABEL_DIVISOR + instance_count[category["id"]]
        segment_map[mask] = segment_id
        segments.append({"id": segment_id, "category_id": category["id"], "iscrowd": 0})

    image += rng.normal(0, 3, size=image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    present = set(np.unique(segment_map).tolist())
    segments = [s for s in segments if s["id"] in present]
    return image, segment_map, segments


def _visible_masks(masks):
    """What is left of each mask once the later masks are drawn over it."""
    visible = []
    for i, mask in enumerate(masks):
        covered = np.zeros_like(mask)
        for later in masks[i + 1 :]:
            covered |= later
        visible.append(mask & ~covered)
    return visible


def _id_to_rgb(segment_map):
    """COCO panoptic PNG encoding: id = R + 256 * G + 256^2 * B."""
    rgb = np.zeros(segment_map.shape + (3,), dtype=np.uint8)
    for channel in range(3):
        rgb[..., channel] = (segment_map >> (8 * channel)) & 255
    return rgb


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _split_paths(root, split):
    return {
        "image_root": os.path.join(root, split),
        "panoptic_root": os.path.join(root, f"panoptic_{split}"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "sem_seg_root": os.path.join(root, f"panoptic_semseg_{split}"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def _write_split(root, split, num_images, seed, height, width, first_image_id):
    paths = _split_paths(root, split)
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        os.makedirs(paths[key], exist_ok=True)
    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)

    contiguous = {c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)}
    # One independent stream per image: an image does not change when the split size does.
    seeds = np.random.SeedSequence([seed, sum(map(ord, split))]).spawn(num_images)
    images, panoptic_annotations, instance_annotations = [], [], []
    for index in range(num_images):
        rng = np.random.default_rng(seeds[index])
        image_id = first_image_id + index
        stem = f"{image_id:06d}"
        image, segment_map, segments = _draw_image(height, width, rng)

        Image.fromarray(image).save(os.path.join(paths["image_root"], stem + ".jpg"), quality=95)
        Image.fromarray(_id_to_rgb(segment_map)).save(os.path.join(paths["panoptic_root"], stem + ".png"))
        semantic = np.full((height, width), IGNORE_LABEL, dtype=np.uint8)
        for segment in segments:
            semantic[segment_map == segment["id"]] = contiguous[segment["category_id"]]
        Image.fromarray(semantic).save(os.path.join(paths["sem_seg_root"], stem + ".png"))

        images.append({"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width})
        segments_info = []
        for segment in segments:
            mask = segment_map == segment["id"]
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            bbox = [float(v) for v in mask_util.toBbox(rle)]
            area = int(mask.sum())
            segments_info.append(dict(segment, bbox=bbox, area=area))
            if any(c["id"] == segment["category_id"] and c["isthing"] for c in SYNTHETIC_CATEGORIES):
                rle["counts"] = rle["counts"].decode("ascii")
                instance_annotations.append(
                    {
                        "id": len(instance_annotations) + 1,
                        "image_id": image_id,
                        "category_id": segment["category_id"],
                        "segmentation": rle,
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
        panoptic_annotations.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info}
        )

    info = {"description": f"Mask2Former synthetic dataset, split {split}, seed {seed}"}
    with open(paths["panoptic_json"], "w") as f:
        json.dump(
            {
                "info": info,
                "images": images,
                "annotations": panoptic_annotations,
                "categories": SYNTHETIC_CATEGORIES,
            },
            f,
        )
    thing_categories = [
        {k: c[k] for k in ("id", "name", "supercategory")} for c in SYNTHETIC_CATEGORIES if c["isthing"]
    ]
    with open(paths["instances_json"], "w") as f:
        json.dump(
            {
                "info": info,
                "images": images,
                "annotations": instance_annotations,
                "categories": thing_categories,
            },
            f,
        )


def _marker_contents(seed, splits, height, width):
    return {
        "version": FORMAT_VERSION,
        "seed": seed,
        "splits": dict(splits),
        "height": height,
        "width": width,
    }


def generate(root, seed=DEFAULT_SEED, splits=None, height=DEFAULT_HEIGHT, width=DEFAULT_WIDTH, overwrite=True):
    """
    Write the synthetic dataset to `root`.

    The data is written to a temporary folder next to `root` and moved into place at the end, so an
    interrupted run, or several processes generating at once, never leave a half-written dataset.

    Args:
        root (str): output folder.
        seed (int): the same seed and arguments give byte-identical files.
        splits (dict[str, int]): number of images per split, default ``DEFAULT_SPLITS``.
        height, width (int): image size.
        overwrite (bool): replace a dataset already in `root`; if False and `root` exists, the
            dataset there is kept (another process made it first) and FileExistsError is raised.
    """
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    start = time.perf_counter()

    def write_splits(staging):
        first_image_id = 1
        for split, num_images in splits.items():
            _write_split(staging, split, num_images, seed, height, width, first_image_id)
            first_image_id += num_images

    root = write_dataset_atomically(
        root, ".synthetic-", write_splits, _MARKER, _marker_contents(seed, splits, height, width), overwrite
    )
    logger.info(
        "Generated the synthetic dataset (%s) in %s in %.1f s",
        ", ".join(f"{k}: {v} images" for k, v in splits.items()),
        root,
        time.perf_counter() - start,
    )
    return root


def write_dataset_atomically(root, staging_prefix, write_contents, marker_name, marker_contents, overwrite):
    """
    Call ``write_contents(folder)`` on a temporary folder next to `root`, write the marker file
    (``marker_name``, holding ``marker_contents``) last and move the folder to `root`, so an
    interrupted run, or several processes generating at once, never leave a half-written dataset.
    With ``overwrite=False`` an existing `root` is kept and FileExistsError raised. Returns the
    absolute `root`.
    """
    root = os.path.abspath(root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=staging_prefix, dir=parent)
    try:
        write_contents(staging)
        # The marker is written last: its presence means the dataset is complete.
        with open(os.path.join(staging, marker_name), "w") as f:
            json.dump(marker_contents, f, indent=1)
        if os.path.exists(root):
            if not overwrite:
                raise FileExistsError(f"{root} already exists")
            shutil.rmtree(root)
        # Atomic, and fails if another process has put a non-empty `root` in place meanwhile.
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def ensure_generated(root, splits=("train", "val")):
    """
    Make sure a complete synthetic dataset with the given splits is in `root`.

    A copy already there is used as it is, whatever seed or size it was made with (so a dataset
    made with the command line is not overwritten); otherwise the default dataset is generated.
    """
    return ensure_dataset(
        root, _MARKER, FORMAT_VERSION, splits, lambda: generate(root, overwrite=False),
        "synthetic dataset", "python -m mask2former.data.synthetic",
    )


def ensure_dataset(root, marker_name, format_version, splits, generate_default, description, command):
    """
    The generated dataset in `root` if its marker (``marker_name``) says it is complete, of
    ``format_version`` and has all ``splits``; otherwise ``generate_default()`` makes it. An
    outdated copy is replaced; a folder with other contents is an error naming ``command``, the
    command line that regenerates it.
    """
    marker = os.path.join(root, marker_name)
    if os.path.isfile(marker):
        with open(marker) as f:
            made = json.load(f)
        if made.get("version") == format_version and all(s in made.get("splits", {}) for s in splits):
            return root
        logger.info("The %s in %s is outdated or lacks a split; regenerating it.", description, root)
        shutil.rmtree(root)
    elif os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(
            f"{root} exists but is not a complete {description} (no {marker_name}). Delete it, or "
            f"regenerate it with: {command} --root {root}"
        )
    elif os.path.isdir(root):
        os.rmdir(root)
    logger.info("Generating the %s in %s (first use; takes a few seconds).", description, root)
    try:
        return generate_default()
    except OSError:
        # Another process (e.g. another rank of a multi-process run) moved its copy in first.
        if os.path.isfile(marker):
            return root
        raise


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------
def register_synthetic(root=None, prefix="synthetic", splits=("train", "val")):
    """
    Register ``{prefix}_{panoptic,sem_seg,instance}_{split}`` for the dataset in `root`.

    Nothing is read or generated until a dataset is first loaded. Returns the registered names.
    """
    root = synthetic_root() if root is None else root
    metadata = panoptic_metadata_from_categories(SYNTHETIC_CATEGORIES)
    names = []

    def ensure():
        ensure_generated(root, splits)

    for split in splits:
        paths = _split_paths(root, split)

        def load_panoptic(paths=paths):
            ensure()
            return load_coco_panoptic_json(
                paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], metadata,
                sem_seg_root=paths["sem_seg_root"],
            )

        def load_semantic(paths=paths):
            ensure()
            return load_sem_seg_folder(paths["image_root"], paths["sem_seg_root"])

        def load_instances(paths=paths, name=f"{prefix}_instance_{split}"):
            ensure()
            return load_coco_instance_json(paths["instances_json"], paths["image_root"], name)

        name = f"{prefix}_panoptic_{split}"
        DatasetCatalog.register(name, load_panoptic)
        MetadataCatalog.get(name).set(
            panoptic_root=paths["panoptic_root"],
            image_root=paths["image_root"],
            panoptic_json=paths["panoptic_json"],
            sem_seg_root=paths["sem_seg_root"],
            json_file=paths["instances_json"],
            evaluator_type="coco_panoptic_seg",
            **metadata,
        )
        names.append(name)

        name = f"{prefix}_sem_seg_{split}"
        DatasetCatalog.register(name, load_semantic)
        MetadataCatalog.get(name).set(
            image_root=paths["image_root"],
            sem_seg_root=paths["sem_seg_root"],
            evaluator_type="sem_seg",
            stuff_classes=metadata["stuff_classes"],
            stuff_colors=metadata["stuff_colors"],
            ignore_label=IGNORE_LABEL,
        )
        names.append(name)

        name = f"{prefix}_instance_{split}"
        DatasetCatalog.register(name, load_instances)
        MetadataCatalog.get(name).set(
            image_root=paths["image_root"],
            json_file=paths["instances_json"],
            evaluator_type="coco",
            thing_classes=metadata["thing_classes"],
            thing_colors=metadata["thing_colors"],
            thing_dataset_id_to_contiguous_id=metadata["thing_dataset_id_to_contiguous_id"],
        )
        names.append(name)
    return names


def write_preview(root, path, split="train", num_images=8):
    """
    Save a PNG grid to look at the data: each column is one image above its panoptic
    annotation (segments in their class colour, things with a per-instance shade).
    """
    paths = _split_paths(root, split)
    with open(paths["panoptic_json"]) as f:
        content = json.load(f)
    colors = {c["id"]: np.array(c["color"], dtype=np.float32) for c in content["categories"]}
    columns = []
    for image_info, annotation in list(zip(content["images"], content["annotations"]))[:num_images]:
        image = np.asarray(Image.open(os.path.join(paths["image_root"], image_info["file_name"])).convert("RGB"))
        rgb = np.asarray(Image.open(os.path.join(paths["panoptic_root"], annotation["file_name"]))).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        drawn = np.zeros_like(image, dtype=np.float32)
        for segment in annotation["segments_info"]:
            shade = 1.0 - 0.2 * (segment["id"] % LABEL_DIVISOR % 3)
            drawn[ids == segment["id"]] = colors[segment["category_id"]] * shade
        columns.append(np.concatenate([image, drawn.astype(np.uint8)], axis=0))
    grid = np.concatenate(columns, axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    return path


def _main():
    parser = argparse.ArgumentParser(description="Generate the built-in synthetic dataset.")
    parser.add_argument("--root", default=synthetic_root(), help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPLITS["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPLITS["val"])
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--preview", metavar="PNG", help="also save a grid of training images and annotations")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(
        args.root,
        seed=args.seed,
        splits={"train": args.num_train, "val": args.num_val},
        height=args.height,
        width=args.width,
    )
    if args.preview:
        logger.info("Preview of the training images: %s", write_preview(args.root, args.preview))


if __name__ == "__main__":
    _main()
else:
    register_synthetic()
