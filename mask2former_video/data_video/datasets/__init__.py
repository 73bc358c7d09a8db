from . import builtin  # noqa: F401  (registers the YouTube-VIS splits)
from . import synthetic_vis  # noqa: F401  (registers synthetic_vis_{train,val})
from .ytvis import load_ytvis_json, register_ytvis_instances, ytvis_categories  # noqa: F401
