import sys

if sys.version_info < (3, 10):
    raise ImportError(
        f"Mask2Former needs Python 3.10 or newer (it is set up and tested on 3.11); "
        f"this is Python {sys.version.split()[0]}. Run scripts/setup.sh, which builds a Python 3.11 environment."
    )

# Must run before anything imports detectron2 (see mask2former/utils/detectron2_compat.py).
from .utils import detectron2_compat  # noqa: E402

detectron2_compat.apply()

from .utils.download import register_url_handler  # noqa: E402

# MODEL.WEIGHTS may be a URL: downloaded once into a cache, resumably (see utils/download.py).
register_url_handler()

from . import modeling  # noqa: E402,F401  (registers backbones/heads)
from .config import add_maskformer2_config  # noqa: E402,F401
from .maskformer_model import MaskFormer  # noqa: E402,F401  (registers the meta-architecture)
from .semask_model import SeMaskMaskFormer  # noqa: E402,F401  (registers the meta-architecture)
from .test_time_augmentation import SemanticSegmentorWithTTA  # noqa: E402,F401
from . import data  # noqa: E402,F401  (registers the builtin datasets)
from .data.dataset_mappers import (  # noqa: E402,F401  (dataset mappers, as upstream exports them)
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .evaluation.instance_evaluation import InstanceSegEvaluator  # noqa: E402,F401  (as upstream)
from .evaluation import build_evaluator  # noqa: E402,F401  (evaluators by evaluator_type)
from .utils import checkpoint  # noqa: E402,F401  (also makes Detectron2's checkpointer read .pkl as data only)
