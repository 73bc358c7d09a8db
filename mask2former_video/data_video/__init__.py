"""Video data: YouTube-VIS datasets, clip mappers, loaders, the YouTube-VIS evaluator."""
import mask2former  # noqa: F401  isort: skip  (Detectron2 compatibility layer first)

from . import datasets  # noqa: F401  (registers ytvis_{2019,2021}_{train,val,test})
from . import validation  # noqa: F401  (adds the "ytvis" type of DATASETS.CUSTOM)
from .build import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from .dataset_mapper import CocoClipDatasetMapper, YTVISDatasetMapper
from .validation import validate_video_dataset_dicts
from .ytvis_eval import YTVISEvaluator

__all__ = [
    "YTVISDatasetMapper",
    "CocoClipDatasetMapper",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "get_detection_dataset_dicts",
    "validate_video_dataset_dicts",
    "YTVISEvaluator",
]
