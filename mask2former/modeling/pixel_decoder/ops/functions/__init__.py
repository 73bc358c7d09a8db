from .ms_deform_attn_func import (
    level_sizes,
    MSDeformAttnFunction,
    ms_deform_attn,
    ms_deform_attn_core_pytorch,
    validate_ms_deform_attn_inputs,
)

__all__ = [
    "level_sizes",
    "MSDeformAttnFunction",
    "ms_deform_attn",
    "ms_deform_attn_core_pytorch",
    "validate_ms_deform_attn_inputs",
]
