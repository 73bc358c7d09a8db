"""
Checks of video datasets before training, with one error listing every problem (the image
datasets' :mod:`mask2former.data.validation`, extended to clips), and the ``ytvis`` type of
``DATASETS.CUSTOM`` (zero-code custom video datasets in YouTube-VIS json format)::

    DATASETS.CUSTOM "['name=my_vis_train,type=ytvis,json_file=data/train.json,image_root=data/train/JPEGImages']"
"""
import logging

from mask2former.data.custom import register_dataset_type
from mask2former.data.validation import ValidationReport, read_image_size

from .datasets.ytvis import load_ytvis_json, read_ytvis_json, ytvis_metadata_from_categories

__all__ = ["validate_video_dataset_dicts", "is_video_dataset"]

logger = logging.getLogger(__name__)


def is_video_dataset(dataset_dicts):
    """Video records carry ``file_names`` (one per frame) instead of ``file_name``."""
    return bool(dataset_dicts) and "file_names" in dataset_dicts[0]


def validate_video_dataset_dicts(dataset_dicts, metadata=None, dataset_name="dataset", report=None):
    """
    Check every frame of every video: the video has frames; each frame exists, decodes and has
    the video's height and width; all frames of a video have one size; there is one annotation
    list per frame; category ids are below ``len(metadata.thing_classes)``.

    Raises:
        DatasetValidationError listing every problem, when `report` is not given.
    """
    own_report = report is None
    report = ValidationReport(dataset_name) if own_report else report
    json_file = getattr(metadata, "json_file", None) if metadata is not None else None
    thing_classes = getattr(metadata, "thing_classes", None) if metadata is not None else None
    for record in dataset_dicts:
        video = f"video {record.get('video_id', '?')}"
        where = json_file or dataset_name
        file_names = record.get("file_names") or []
        if not file_names:
            report.add(where, f"{video} is empty: it has no frames")
            continue
        expected = (record["height"], record["width"]) if "height" in record and "width" in record else None
        first = None  # (path, size) of the first readable frame
        for path in file_names:
            size = read_image_size(path, report, expected)
            if size is None:
                continue
            if first is None:
                first = (path, size)
            elif size != first[1]:
                report.add(
                    path,
                    f"{video}: frames differ in size: this frame is {size[0]}x{size[1]} (HxW) but "
                    f"{first[0]} is {first[1][0]}x{first[1][1]}",
                )
        annotations = record.get("annotations")
        if annotations is None:
            continue
        if len(annotations) != len(file_names):
            report.add(where, f"{video} has {len(file_names)} frames but {len(annotations)} per-frame annotation lists")
        for frame, objects in enumerate(annotations):
            for obj in objects:
                category = obj.get("category_id")
                if thing_classes is not None and not (isinstance(category, int) and 0 <= category < len(thing_classes)):
                    report.add(
                        file_names[min(frame, len(file_names) - 1)],
                        f"{video}: an annotation has class {category}, outside the {len(thing_classes)} classes",
                    )
    if own_report:
        report.raise_if_failed()
    return report


def _prepare_ytvis(spec, report):
    content = read_ytvis_json(spec["json_file"], report)
    if content is None:
        return [], {}
    metadata = ytvis_metadata_from_categories(content["categories"])
    records = load_ytvis_json(spec["json_file"], spec["image_root"], report=report)
    metadata.update(json_file=spec["json_file"], image_root=spec["image_root"], evaluator_type="ytvis")
    return records, metadata


register_dataset_type("ytvis", {"json_file": True, "image_root": True}, _prepare_ytvis, validate_video_dataset_dicts)
