# Importing the submodules registers their components (backbones, heads, pixel decoders,
# transformer decoders) in Detectron2's registries.
from . import backbone  # noqa: F401
