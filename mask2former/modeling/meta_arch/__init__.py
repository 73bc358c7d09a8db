from .mask_former_head import MaskFormerHead  # noqa: F401
from .per_pixel_baseline import PerPixelBaselineHead, PerPixelBaselinePlusHead  # noqa: F401
from .branch_mask_former_head import BranchMaskFormerHead  # noqa: F401
