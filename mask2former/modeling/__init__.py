# Importing the submodules registers their components (backbones, heads, pixel decoders,
# transformer decoders) in Detectron2's registries.
from . import backbone  # noqa: F401
from . import pixel_decoder  # noqa: F401
from . import transformer_decoder  # noqa: F401
from . import meta_arch  # noqa: F401
