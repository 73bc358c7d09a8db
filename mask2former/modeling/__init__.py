# Importing the submodules registers their components (backbones, heads, pixel decoders,
# transformer decoders) in Detectron2's registries. The names below are the ones upstream exports.
from .backbone.swin import D2SwinTransformer  # noqa: F401
from .pixel_decoder.fpn import BasePixelDecoder  # noqa: F401
from .pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder  # noqa: F401
from .meta_arch.mask_former_head import MaskFormerHead  # noqa: F401
from .meta_arch.per_pixel_baseline import PerPixelBaselineHead, PerPixelBaselinePlusHead  # noqa: F401
from . import transformer_decoder  # noqa: F401
