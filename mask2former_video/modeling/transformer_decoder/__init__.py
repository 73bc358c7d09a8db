from .position_encoding import PositionEmbeddingSine3D  # noqa: F401
from .video_mask2former_transformer_decoder import VideoMultiScaleMaskedTransformerDecoder  # noqa: F401
