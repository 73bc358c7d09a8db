"""Data loaders of the video model: Detectron2's loaders fed with video records."""
import itertools
import logging
import os

from detectron2.data import DatasetCatalog
from detectron2.data import build_detection_test_loader as d2_build_test_loader
from detectron2.data import build_detection_train_loader as d2_build_train_loader
from detectron2.data.samplers import TrainingSampler

from mask2former.data.validation import ValidationReport

from .dataset_mapper import YTVISDatasetMapper

__all__ = ["get_detection_dataset_dicts", "build_detection_train_loader", "build_detection_test_loader"]

logger = logging.getLogger(__name__)


def _check_frames_exist(records, name):
    """Missing frame files, all listed at once before any training step (cheap: no decoding)."""
    report = ValidationReport(name)
    for record in records:
        for path in record.get("file_names", [record.get("file_name")]):
            if path is not None and not os.path.isfile(path):
                report.add(path, f"frame of video {record.get('video_id', record.get('image_id'))} does not exist")
    report.raise_if_failed()


def get_detection_dataset_dicts(names, filter_empty=True, check_files=True):
    """
    The records of the named datasets, concatenated. `filter_empty` drops the videos without a
    single annotated object; `check_files` fails early, listing every missing frame file.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("No dataset given (DATASETS.TRAIN / DATASETS.TEST is empty).")
    records = []
    for name in names:
        dataset = DatasetCatalog.get(name)
        if not dataset:
            raise ValueError(f"Dataset {name!r} is empty.")
        if check_files:
            _check_frames_exist(dataset, name)
        records.append(dataset)
    records = list(itertools.chain.from_iterable(records))
    if filter_empty:
        before = len(records)
        records = [r for r in records if _has_objects(r)]
        if before != len(records):
            logger.info("Removed %d videos without annotated objects; %d left.", before - len(records), len(records))
        if not records:
            raise ValueError(f"Datasets {list(names)} have no annotated objects to train on.")
    return records


def _has_objects(record):
    annotations = record.get("annotations", [])
    if "file_names" in record:  # a video: one list per frame
        return any(len(frame) for frame in annotations)
    return any(not a.get("iscrowd", 0) for a in annotations)


def build_detection_train_loader(cfg, mapper=None, dataset=None, sampler=None):
    """An infinite loader of training clips (``SOLVER.IMS_PER_BATCH`` videos per batch)."""
    if dataset is None:
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    if mapper is None:
        mapper = YTVISDatasetMapper(cfg, is_train=True)
    if sampler is None:
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(f"Video training supports DATALOADER.SAMPLER_TRAIN TrainingSampler, not {cfg.DATALOADER.SAMPLER_TRAIN}.")
        sampler = TrainingSampler(len(dataset))
    return d2_build_train_loader(
        dataset,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_detection_test_loader(cfg, dataset_name, mapper=None):
    """One whole video per batch, in dataset order."""
    dataset = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    if mapper is None:
        mapper = YTVISDatasetMapper(cfg, is_train=False)
    return d2_build_test_loader(dataset, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)
