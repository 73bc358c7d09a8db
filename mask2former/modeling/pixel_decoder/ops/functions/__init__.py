from .ms_deform_attn_func import (
    is_exporting,
    level_sizes,
    MSDeformAttnFunction,
    ms_deform_attn,
    ms_deform_attn_core_pytorch,
    validate_ms_deform_attn_inputs,
)

__all__ = [
    "is_exporting",
    "level_sizes",
    "MSDeformAttnFunction",
    "ms_deform_attn",
    "ms_deform_attn_core_pytorch",
    "validate_ms_deform_attn_inputs",
]
