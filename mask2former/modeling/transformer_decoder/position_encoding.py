"""Sine positional encoding of 2D feature maps (DETR style)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """
    Encodes each (y, x) position with sines and cosines of geometrically spaced frequencies;
    the output has 2 * num_pos_feats channels (the y half first).

    With `normalize`, the 1-based pixel counts along each axis are divided by the number of valid
    (not masked) pixels and multiplied by `scale`, so the encoding does not depend on the map size.
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `normalize` must be True when `scale` is given")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x, mask=None):
        """
        Args:
            x: (N, C, H, W); only its batch size, spatial size and device are used.
            mask: optional (N, H, W) bool, True at padded pixels.
        Returns:
            (N, 2 * num_pos_feats, H, W) float32
        """
        batch, _, height, width = x.shape
        if mask is None:
            valid = torch.ones((batch, height, width), dtype=torch.float32, device=x.device)
        else:
            valid = (~mask).to(torch.float32)
        # Coordinates count the valid pixels up to and including each one, down each column (y)
        # and along each row (x).
        y_coord = valid.cumsum(1)
        x_coord = valid.cumsum(2)
        if self.normalize:
            y_coord = y_coord / (y_coord[:, -1:, :] + 1e-6) * self.scale
            x_coord = x_coord / (x_coord[:, :, -1:] + 1e-6) * self.scale
        # Channels 2k and 2k+1 share the wavelength temperature ** (2k / num_pos_feats).
        pair_start = torch.arange(self.num_pos_feats, device=x.device).div(2, rounding_mode="floor") * 2
        wavelengths = self.temperature ** (pair_start / self.num_pos_feats)
        return torch.cat((self._sin_cos(y_coord, wavelengths), self._sin_cos(x_coord, wavelengths)), dim=1)

    @staticmethod
    def _sin_cos(coord, wavelengths):
        """(N, H, W) coordinates -> (N, F, H, W): sine on even channels, cosine on odd ones."""
        phase = coord[:, None, :, :] / wavelengths[None, :, None, None]
        encoding = torch.empty_like(phase)
        encoding[:, 0::2] = phase[:, 0::2].sin()
        encoding[:, 1::2] = phase[:, 1::2].cos()
        return encoding
