from .swin import D2SwinTransformer, SwinTransformer  # noqa: F401
from .dinat import D2DiNAT, DiNAT  # noqa: F401
from .semask_swin import D2SeMaskSwinTransformer  # noqa: F401
from .vit_adapter import D2ViTAdapter  # noqa: F401
