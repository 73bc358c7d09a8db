# Must run before anything imports detectron2 (see mask2former/utils/detectron2_compat.py).
from .utils import detectron2_compat

detectron2_compat.apply()

from . import modeling  # noqa: E402,F401  (registers backbones/heads)
from .config import add_maskformer2_config  # noqa: E402,F401
