"""Sine positional encoding of clips: (time, y, x)."""
import torch

from mask2former.modeling.transformer_decoder.position_encoding import PositionEmbeddingSine


class PositionEmbeddingSine3D(PositionEmbeddingSine):
    """
    The 2-D sine encoding of each frame (``2 * num_pos_feats`` channels: y half, then x half) plus
    a sine encoding of the frame index with ``2 * num_pos_feats`` frequencies, added channel for
    channel. Channel ``2i`` of the time part is ``sin(t / temperature ** (2i / (2 * num_pos_feats)))``
    and channel ``2i + 1`` the cosine at the same frequency, where ``t`` is the 1-based frame count
    (divided by the number of frames and multiplied by ``scale`` when ``normalize``).
    """

    def forward(self, x, mask=None):
        """
        Args:
            x: (B, T, C, H, W); only its sizes and device are used.
            mask: optional (B, T, H, W) bool, True at padded positions.
        Returns:
            (B, T, 2 * num_pos_feats, H, W) float32
        """
        if x.dim() != 5:
            raise ValueError(f"PositionEmbeddingSine3D expects (B, T, C, H, W), got shape {tuple(x.shape)}")
        b, t, _, h, w = x.shape
        if mask is None:
            mask = torch.zeros((b, t, h, w), device=x.device, dtype=torch.bool)
        spatial = super().forward(x.flatten(0, 1), mask.flatten(0, 1)).unflatten(0, (b, t))

        t_embed = (~mask).cumsum(1, dtype=torch.float32)
        if self.normalize:
            t_embed = t_embed / (t_embed[:, -1:] + 1e-6) * self.scale
        num_feats = 2 * self.num_pos_feats
        dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / num_feats)
        phase = t_embed[..., None] / dim_t  # (B, T, H, W, 2F)
        temporal = torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=-1).flatten(-2)
        return spatial + temporal.permute(0, 1, 4, 2, 3)
