from .swin import D2SwinTransformer, SwinTransformer  # noqa: F401
