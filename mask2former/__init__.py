# Must run before anything imports detectron2 (see mask2former/utils/detectron2_compat.py).
from .utils import detectron2_compat

detectron2_compat.apply()
