from .fpn import BasePixelDecoder, TransformerEncoderPixelDecoder, build_pixel_decoder  # noqa: F401
from .msdeformattn import MSDeformAttnPixelDecoder  # noqa: F401
