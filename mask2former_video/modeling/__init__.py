from .criterion import VideoSetCriterion  # noqa: F401
from .matcher import VideoHungarianMatcher  # noqa: F401
from .transformer_decoder import PositionEmbeddingSine3D, VideoMultiScaleMaskedTransformerDecoder  # noqa: F401
