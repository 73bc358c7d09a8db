"""Mask2Former's masked-attention decoder for clips (video instance segmentation).

The image decoder (:class:`MultiScaleMaskedTransformerDecoder`) with one set of queries per video
instead of per image: the memory of each level holds the features of all T frames of the clip
(ordered frame, row, column), the position encoding adds the frame index to the 2-D one, and every
query predicts one mask per frame, whose foreground restricts its attention over all T x h x w
positions. No parameter is added or renamed, so checkpoints of the image model initialise it
(all but ``class_embed`` when the number of classes differs).
"""
from detectron2.config import configurable

import torch

from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import (
    MultiScaleMaskedTransformerDecoder,
)
from mask2former.modeling.transformer_decoder.maskformer_transformer_decoder import TRANSFORMER_DECODER_REGISTRY

from .position_encoding import PositionEmbeddingSine3D


@TRANSFORMER_DECODER_REGISTRY.register()
class VideoMultiScaleMaskedTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    @configurable
    def __init__(self, in_channels, mask_classification=True, *, num_frames: int, **kwargs):
        """
        Args:
            num_frames: frames per training clip (INPUT.SAMPLING_FRAME_NUM): in training the
                inputs are the frames of ``batch / num_frames`` clips; at inference they are all
                the frames of one video.
            others: as :class:`MultiScaleMaskedTransformerDecoder`.
        """
        super().__init__(in_channels, mask_classification, **kwargs)
        if num_frames < 1:
            raise ValueError(f"INPUT.SAMPLING_FRAME_NUM must be >= 1, got {num_frames}")
        self.num_frames = num_frames
        # Parameter-free: replacing the 2-D encoding leaves the state dict unchanged.
        self.pe_layer = PositionEmbeddingSine3D(self.pe_layer.num_pos_feats, normalize=True)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        ret = super().from_config(cfg, in_channels, mask_classification)
        ret["num_frames"] = cfg.INPUT.SAMPLING_FRAME_NUM
        return ret

    def forward(self, x, mask_features, mask=None):
        """
        Args:
            x: 3 feature maps (B*T, C, h_l, w_l), low to high resolution, frames of a clip adjacent.
            mask_features: (B*T, mask_dim, H, W).
            mask: unused.
        Returns:
            dict with "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, T, H, W) and, in training,
            "aux_outputs" (the earlier predictions; at inference an empty list, which saves memory
            growing with the video's length).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"VideoMultiScaleMaskedTransformerDecoder takes {self.num_feature_levels} feature levels, "
                f"got {len(x)}"
            )
        num_images = mask_features.shape[0]
        if self.training:
            if num_images % self.num_frames:
                raise ValueError(
                    f"VideoMultiScaleMaskedTransformerDecoder: {num_images} frames in the batch is not a "
                    f"multiple of INPUT.SAMPLING_FRAME_NUM={self.num_frames}"
                )
            num_videos = num_images // self.num_frames
        else:
            num_videos = 1
        clip_shape = (num_videos, num_images // num_videos)

        src, pos, size_list = [], [], []
        for i in range(self.num_feature_levels):
            size_list.append(x[i].shape[-2:])
            # (B*T, C, h, w) -> (T*h*w, B, C): the memory of a video is all its frames.
            pos_i = self.pe_layer(x[i].unflatten(0, clip_shape), None)
            pos.append(pos_i.permute(1, 3, 4, 0, 2).flatten(0, 2))
            src_i = self.input_proj[i](x[i]) + self.level_embed.weight[i][None, :, None, None]
            src.append(src_i.unflatten(0, clip_shape).permute(1, 3, 4, 0, 2).flatten(0, 2))
        return self.decode(
            src, pos, size_list, mask_features.unflatten(0, clip_shape), keep_aux=self.training
        )

    def mask_logits(self, mask_embed, mask_features):
        """Mask logits (B, Q, T, H, W) from query embeddings (B, Q, C) and pixel embeddings (B, T, C, H, W)."""
        return torch.einsum("bqc,btchw->bqthw", mask_embed, mask_features)
