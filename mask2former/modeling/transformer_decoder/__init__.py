from .maskformer_transformer_decoder import (  # noqa: F401
    TRANSFORMER_DECODER_REGISTRY,
    StandardTransformerDecoder,
    build_transformer_decoder,
)
from .mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder  # noqa: F401
from .position_encoding import PositionEmbeddingSine  # noqa: F401
