"""
YouTube-VIS json files -> Detectron2 video dataset dicts, and the registration of such datasets.

A YouTube-VIS json has ``videos`` (id, file_names, height, width, length), ``categories`` and, for
annotated splits, ``annotations``: one per object track, with ``video_id``, ``category_id`` and
per-frame lists ``segmentations`` / ``bboxes`` / ``areas`` whose entry is None where the object
is not visible. The loader turns each video into one record::

    {"file_names": [...], "height": H, "width": W, "length": T, "video_id": id,
     "annotations": [[{"id", "category_id", "iscrowd", "bbox", "bbox_mode", "segmentation"}, ...]
                     for each of the T frames]}

with contiguous category ids (the dataset's ``thing_dataset_id_to_contiguous_id``).

Problems that would otherwise fail deep inside training (an empty video, a track with fewer
segmentation entries than its video has frames, an RLE of another size than the video, unknown
video or category ids) are collected and raised as one :class:`DatasetValidationError` naming
the json file and the videos. Problems that need the frames on disk are checked by
:func:`mask2former_video.data_video.validation.validate_video_dataset_dicts`.
"""
import json
import logging
import os

import pycocotools.mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from mask2former.data.custom import _instance_metadata, read_annotation_json
from mask2former.data.validation import ValidationReport

__all__ = [
    "load_ytvis_json",
    "read_ytvis_json",
    "register_ytvis_instances",
    "ytvis_categories",
    "ytvis_metadata_from_categories",
]

logger = logging.getLogger(__name__)

_CATEGORY_FILES = {
    2019: "ytvis_2019_categories.json",
    2021: "ytvis_2021_categories.json",
}


def ytvis_categories(year):
    """The 40 categories of YouTube-VIS `year` (2019 or 2021): dicts with id, name, color, isthing."""
    if year not in _CATEGORY_FILES:
        raise KeyError(f"YouTube-VIS has category tables for {sorted(_CATEGORY_FILES)}, not {year!r}.")
    with open(os.path.join(os.path.dirname(__file__), _CATEGORY_FILES[year])) as f:
        return json.load(f)


def ytvis_metadata_from_categories(categories):
    """thing_classes / thing_colors / thing_dataset_id_to_contiguous_id, in increasing id order."""
    # custom.py's palette is the fallback colour for categories without one.
    return _instance_metadata(categories)


def read_ytvis_json(json_file, report):
    """The parsed json, or None after adding the reason to `report`."""
    content = read_annotation_json(json_file, report)
    if content is None:
        return None
    missing = [key for key in ("videos", "categories") if key not in content]
    if not isinstance(content, dict) or missing:
        report.add(json_file, f"not a YouTube-VIS annotation file: it lacks the key(s) {missing or ['videos']}")
        return None
    return content


def _check_videos(content, json_file, report):
    """Videos: unique ids, at least one frame, `length` equal to the number of file names."""
    videos = {}
    for index, video in enumerate(content["videos"]):
        video_id = video.get("id")
        label = f"video {video_id}" if video_id is not None else f"video #{index}"
        if video_id is None:
            report.add(json_file, f"{label} has no 'id'")
            continue
        if video_id in videos:
            report.add(json_file, f"{label}: the id is used twice")
            continue
        file_names = video.get("file_names")
        if not file_names:
            report.add(json_file, f"{label} is empty: it lists no frames ('file_names')")
            continue
        if "length" in video and video["length"] != len(file_names):
            report.add(json_file, f"{label}: 'length' is {video['length']} but it lists {len(file_names)} frames")
            continue
        if not all(isinstance(video.get(key), int) and video[key] > 0 for key in ("height", "width")):
            report.add(json_file, f"{label}: 'height' and 'width' must be positive integers")
            continue
        videos[video_id] = video
    return videos


def _frame_segmentation(segm, height, width, json_file, label, frame, report):
    """One frame's segmentation in the form the mapper reads, None if absent, False if invalid."""
    if segm is None or segm == [] or segm == {}:
        return None
    if isinstance(segm, dict):
        size = segm.get("size")
        if size is None or "counts" not in segm:
            report.add(json_file, f"{label}, frame {frame}: an RLE needs 'size' and 'counts'")
            return False
        if tuple(size) != (height, width):
            report.add(
                json_file,
                f"{label}, frame {frame}: its RLE mask is {size[0]}x{size[1]} (HxW) but the video is {height}x{width}",
            )
            return False
        if isinstance(segm["counts"], list):
            # Uncompressed RLE: compress once here, not in every epoch.
            segm = mask_util.frPyObjects(segm, height, width)
        return segm
    if isinstance(segm, list):
        # Polygons of fewer than 3 points describe no area.
        polygons = [p for p in segm if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
        return polygons or None
    report.add(json_file, f"{label}, frame {frame}: a segmentation must be an RLE dict or polygons")
    return False


def _box_of(segm, height, width):
    if isinstance(segm, dict):
        return [float(v) for v in mask_util.toBbox(segm)]
    rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    return [float(v) for v in mask_util.toBbox(rle)]


def load_ytvis_json(json_file, image_root, dataset_name=None, extra_annotation_keys=None, report=None):
    """
    Load a YouTube-VIS json into video dataset dicts (see the module docstring).

    Args:
        json_file, image_root (str): the annotations and the folder the ``file_names`` are in.
        dataset_name (str): if given and its metadata has ``thing_dataset_id_to_contiguous_id``,
            category ids are mapped with it (every json category must be in it); otherwise the
            json's categories, in increasing id order, define the contiguous ids (and are set as
            the dataset's metadata when a name is given).
        extra_annotation_keys (list[str]): further annotation keys copied into every frame's objects.
        report (ValidationReport): add problems to it instead of raising them.

    Raises:
        DatasetValidationError listing every problem, when `report` is not given.
    """
    own_report = report is None
    report = ValidationReport(dataset_name or json_file) if own_report else report
    records = []
    content = read_ytvis_json(json_file, report)
    if content is not None:
        records = _records(content, json_file, image_root, dataset_name, extra_annotation_keys or [], report)
    if own_report:
        report.raise_if_failed()
    return records


def _category_map(content, json_file, dataset_name, report):
    json_ids = sorted(c["id"] for c in content["categories"])
    if dataset_name is not None:
        metadata = MetadataCatalog.get(dataset_name)
        id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
        if id_map is not None:
            unknown = [i for i in json_ids if i not in id_map]
            if unknown:
                report.add(json_file, f"category id(s) {unknown} are not categories of dataset {dataset_name!r}")
            return id_map
        metadata.set(**ytvis_metadata_from_categories(content["categories"]))
    return {category_id: i for i, category_id in enumerate(json_ids)}


def _records(content, json_file, image_root, dataset_name, extra_keys, report):
    videos = _check_videos(content, json_file, report)
    id_map = _category_map(content, json_file, dataset_name, report)
    per_video = {video_id: [[] for _ in video["file_names"]] for video_id, video in videos.items()}
    keys = ["id", "iscrowd", "category_id"] + list(extra_keys)
    track_ids = set()
    for index, annotation in enumerate(content.get("annotations", [])):
        label = f"annotation {annotation.get('id', f'#{index}')} (video {annotation.get('video_id')})"
        video = videos.get(annotation.get("video_id"))
        if video is None:
            if annotation.get("video_id") not in {v.get("id") for v in content["videos"]}:
                report.add(json_file, f"{label} refers to video id {annotation.get('video_id')}, which does not exist")
            continue  # a broken video is reported already
        if "id" not in annotation or annotation["id"] in track_ids:
            problem = "has no 'id' (its track id)" if "id" not in annotation else "reuses a track id"
            report.add(json_file, f"{label} {problem}; every annotation needs its own id")
            continue
        track_ids.add(annotation["id"])
        if annotation.get("category_id") not in id_map:
            report.add(json_file, f"{label} uses category id {annotation.get('category_id')}, which does not exist")
            continue
        num_frames = len(video["file_names"])
        segmentations = annotation.get("segmentations")
        if not isinstance(segmentations, list) or len(segmentations) != num_frames:
            count = len(segmentations) if isinstance(segmentations, list) else "no"
            report.add(
                json_file,
                f"{label} has {count} segmentation entries but video {video['id']} has {num_frames} frames "
                "(one entry per frame is needed, null where the object is not visible)",
            )
            continue
        bboxes = annotation.get("bboxes")
        if bboxes is not None and (not isinstance(bboxes, list) or len(bboxes) != num_frames):
            report.add(json_file, f"{label} has {len(bboxes)} bboxes but video {video['id']} has {num_frames} frames")
            continue
        for frame, segm in enumerate(segmentations):
            segm = _frame_segmentation(segm, video["height"], video["width"], json_file, label, frame, report)
            if not segm:
                continue
            obj = {key: annotation[key] for key in keys if key in annotation}
            obj.setdefault("iscrowd", 0)
            obj["category_id"] = id_map[annotation["category_id"]]
            box = bboxes[frame] if bboxes is not None else None
            obj["bbox"] = list(box) if box else _box_of(segm, video["height"], video["width"])
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            obj["segmentation"] = segm
            per_video[video["id"]][frame].append(obj)

    records = []
    for video_id in sorted(videos):
        video = videos[video_id]
        records.append(
            {
                "file_names": [os.path.join(image_root, name) for name in video["file_names"]],
                "height": video["height"],
                "width": video["width"],
                "length": len(video["file_names"]),
                "video_id": video_id,
                "annotations": per_video[video_id],
            }
        )
    logger.info("Loaded %d videos in YouTube-VIS format from %s", len(records), json_file)
    return records


def register_ytvis_instances(name, metadata, json_file, image_root):
    """
    Register a YouTube-VIS-format dataset: nothing is read until it is first loaded.

    Args:
        metadata (dict): e.g. ``ytvis_metadata_from_categories(...)``; may be empty, then the
            json's categories define the classes when it is loaded.
    """
    DatasetCatalog.register(name, lambda: load_ytvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="ytvis", **metadata)
