"""Checks that a dataset's files are complete and consistent, with ONE error that lists what is wrong.

The checks run on Detectron2 dataset dicts, so they work for any registered dataset
(:func:`validate_dataset_dicts`), and the custom-dataset loaders (``mask2former/data/custom.py``)
add the checks that only make sense before records exist (images without masks, annotations that
point to images or categories that do not exist). ``tools/check_dataset.py`` runs them from the
command line.

Problems are collected in a :class:`ValidationReport` rather than raised one at a time, so a user
fixing a dataset sees every broken file at once (the first ``max_listed`` of them, and a count).
"""
import logging
import os

import numpy as np
import tqdm
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DatasetValidationError",
    "ValidationReport",
    "read_image_size",
    "check_label_mask",
    "check_panoptic_png",
    "validate_dataset_dicts",
    "check_num_classes",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_LISTED = 20


class DatasetValidationError(ValueError):
    """A dataset has missing, corrupt or inconsistent files; the message lists them."""

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class ValidationReport:
    """Collects ``(path, problem)`` pairs for one dataset."""

    def __init__(self, dataset_name):
        self.dataset_name = dataset_name
        self.problems = []

    def add(self, path, problem):
        self.problems.append((str(path), problem))

    def __len__(self):
        return len(self.problems)

    def format(self, max_listed=DEFAULT_MAX_LISTED):
        num_files = len({path for path, _ in self.problems})
        lines = [
            f"Dataset '{self.dataset_name}' failed validation: {len(self.problems)} problem(s) in "
            f"{num_files} file(s)" + (f"; the first {max_listed} are:" if len(self.problems) > max_listed else ":")
        ]
        lines += [f"  {path}: {problem}" for path, problem in self.problems[:max_listed]]
        if len(self.problems) > max_listed:
            lines.append(f"  ... and {len(self.problems) - max_listed} more.")
        return "\n".join(lines)

    def raise_if_failed(self, max_listed=DEFAULT_MAX_LISTED):
        if self.problems:
            raise DatasetValidationError(self.format(max_listed), self.problems)


def _open_fully(path, report, what):
    """Decode the whole file (a truncated file often opens fine and fails only when decoded)."""
    if not os.path.isfile(path):
        report.add(path, f"{what} does not exist")
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        report.add(path, f"{what} cannot be read ({type(e).__name__}: {e})")
        return None


def read_image_size(path, report, expected_size=None):
    """Returns the (height, width) of an image, or None (and a problem) if it is unreadable."""
    image = _open_fully(path, report, "image")
    if image is None:
        return None
    size = (image.height, image.width)
    if expected_size is not None and tuple(expected_size) != size:
        report.add(
            path,
            f"image is {size[0]}x{size[1]} (HxW) but the annotations say "
            f"{expected_size[0]}x{expected_size[1]}",
        )
    return size


def _size_mismatch(what, mask_size, image_size, image_path):
    return (
        f"{what} is {mask_size[0]}x{mask_size[1]} (HxW) but its image {image_path} is "
        f"{image_size[0]}x{image_size[1]}"
    )


def check_label_mask(path, report, num_classes, ignore_label, image_size=None, image_path=None):
    """A single-channel mask of class ids: readable, same size as its image, ids in range."""
    mask = _open_fully(path, report, "mask")
    if mask is None:
        return
    if mask.mode not in ("L", "P", "I", "I;16", "1"):
        report.add(path, f"mask has mode {mask.mode}; expected a single-channel PNG of class ids")
        return
    labels = np.asarray(mask)
    if image_size is not None and labels.shape != tuple(image_size):
        report.add(path, _size_mismatch("mask", labels.shape, image_size, image_path))
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if len(bad):
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        report.add(
            path,
            f"label value(s) {shown} are >= the number of classes ({num_classes}) and are not "
            f"the ignore label ({ignore_label})",
        )


def check_panoptic_png(path, report, segment_ids, image_size=None, image_path=None):
    """A COCO panoptic PNG: readable RGB, same size as its image, ids matching segments_info."""
    png = _open_fully(path, report, "panoptic PNG")
    if png is None:
        return
    if png.mode != "RGB":
        report.add(path, f"panoptic PNG has mode {png.mode}; expected RGB (id = R + 256 G + 256^2 B)")
        return
    rgb = np.asarray(png).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    if image_size is not None and ids.shape != tuple(image_size):
        report.add(path, _size_mismatch("panoptic PNG", ids.shape, image_size, image_path))
    in_png = set(np.unique(ids).tolist()) - {0}
    listed = set(segment_ids)
    if in_png - listed:
        report.add(path, f"segment id(s) {sorted(in_png - listed)[:10]} in the PNG are not in segments_info")
    if listed - in_png:
        report.add(path, f"segments_info id(s) {sorted(listed - in_png)[:10]} do not occur in the PNG")


def _num_semantic_classes(metadata):
    classes = getattr(metadata, "stuff_classes", None) if metadata is not None else None
    return len(classes) if classes else None


def validate_dataset_dicts(dataset_dicts, metadata=None, dataset_name="dataset", report=None, progress=False):
    """
    Check every file a list of Detectron2 dataset dicts refers to.

    Checks images (readable, size = the record's height/width), ``sem_seg_file_name`` (exists,
    single channel, size = image, labels < ``len(metadata.stuff_classes)`` or the ignore label),
    ``pan_seg_file_name`` (size = image, ids = ``segments_info`` ids), and instance
    ``annotations`` (category ids < ``len(metadata.thing_classes)``).

    Args:
        metadata: the dataset's Metadata (or None: class-range checks are then skipped).
        report (ValidationReport): add to this report instead of raising.
        progress (bool): show a progress bar (on stderr) and log progress every 10% (sets of
            1000 images or more), since decoding every file of a large set takes minutes.

    Raises:
        DatasetValidationError listing every problem, when `report` is not given.
    """
    own_report = report is None
    report = ValidationReport(dataset_name) if own_report else report
    num_classes = _num_semantic_classes(metadata)
    ignore_label = getattr(metadata, "ignore_label", 255) if metadata is not None else 255
    thing_classes = getattr(metadata, "thing_classes", None) if metadata is not None else None

    dataset_dicts = list(dataset_dicts)
    progress_every = max(len(dataset_dicts) // 10, 1) if progress and len(dataset_dicts) >= 1000 else None
    bar = tqdm.tqdm(dataset_dicts, desc=f"Validating {dataset_name}", unit="image", disable=not progress, mininterval=2)
    for index, record in enumerate(bar):
        if progress_every and index and index % progress_every == 0:
            logger.info("Validating %s: %d/%d records checked", dataset_name, index, len(dataset_dicts))
        image_path = record.get("file_name")
        if image_path is None:
            report.add(f"record {record.get('image_id', '?')}", "has no 'file_name'")
            continue
        expected = (record["height"], record["width"]) if "height" in record and "width" in record else None
        image_size = read_image_size(image_path, report, expected)

        if "sem_seg_file_name" in record:
            if num_classes is None:
                mask = _open_fully(record["sem_seg_file_name"], report, "mask")
                if mask is not None and image_size is not None and (mask.height, mask.width) != image_size:
                    report.add(
                        record["sem_seg_file_name"],
                        _size_mismatch("mask", (mask.height, mask.width), image_size, image_path),
                    )
            else:
                check_label_mask(
                    record["sem_seg_file_name"], report, num_classes, ignore_label, image_size, image_path
                )
        if "pan_seg_file_name" in record:
            segment_ids = [s["id"] for s in record.get("segments_info", [])]
            check_panoptic_png(record["pan_seg_file_name"], report, segment_ids, image_size, image_path)
            if num_classes is not None:
                for segment in record.get("segments_info", []):
                    if not 0 <= segment["category_id"] < num_classes:
                        report.add(
                            record["pan_seg_file_name"],
                            f"segment {segment['id']} has class {segment['category_id']}, outside "
                            f"the {num_classes} classes",
                        )
        for annotation in record.get("annotations", []):
            category = annotation.get("category_id")
            if thing_classes is not None and not (
                isinstance(category, int) and 0 <= category < len(thing_classes)
            ):
                report.add(
                    image_path,
                    f"an annotation has class {category}, outside the {len(thing_classes)} thing classes",
                )
    if own_report:
        report.raise_if_failed()
    return report


_INSTANCE_MAPPERS = ("mask_former_instance", "coco_instance_lsj")


def check_num_classes(cfg):
    """
    The model must have a class for every label its data uses: an error naming the dataset, its
    number of classes and the key to change if ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` is smaller than
    the classes of a ``DATASETS.TRAIN`` or ``DATASETS.TEST`` dataset (its thing classes for
    instance mappers, all its classes otherwise). Otherwise the extra labels silently become
    "no object" in training, or index past the model's classes in evaluation. Reads metadata only.
    """
    from detectron2.data import MetadataCatalog

    instance = cfg.INPUT.DATASET_MAPPER_NAME in _INSTANCE_MAPPERS
    key = "thing_classes" if instance else "stuff_classes"
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    for split, names in (("training", cfg.DATASETS.TRAIN), ("test", cfg.DATASETS.TEST)):
        for name in names:
            classes = MetadataCatalog.get(name).get(key, None)
            if classes is not None and len(classes) > num_classes:
                raise ValueError(
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes} but the {split} dataset {name!r} has "
                    f"{len(classes)} {key.replace('_', ' ')} (mapper {cfg.INPUT.DATASET_MAPPER_NAME!r}); "
                    f"set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}."
                )
