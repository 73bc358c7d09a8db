"""Mask2Former for video instance segmentation (a sibling of the image package, as upstream)."""
import mask2former  # noqa: F401  (must come first: applies the Detectron2 compatibility layer)

from . import modeling  # noqa: F401  (registers VideoMultiScaleMaskedTransformerDecoder)
from .config import add_maskformer2_video_config  # noqa: F401
from .video_maskformer_model import VideoMaskFormer  # noqa: F401  (registers the meta-architecture)
from . import data_video  # noqa: F401  (registers the YouTube-VIS datasets)
from .data_video import (  # noqa: F401
    CocoClipDatasetMapper,
    YTVISDatasetMapper,
    YTVISEvaluator,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
