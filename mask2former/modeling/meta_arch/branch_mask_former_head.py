"""`BranchMaskFormerHead`: `MaskFormerHead` plus SeMask's semantic branch.

The semantic branch fuses the backbone's per-stage semantic maps into one class-logit map at the
input resolution, which `SeMaskMaskFormer` supervises with the semantic-prior loss. It has no
parameters (the published checkpoints hold none) and is only computed in training: inference
uses the mask predictions alone.
"""
import math
from typing import Dict, Optional

import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .mask_former_head import MaskFormerHead

__all__ = ["BranchMaskFormerHead", "fuse_semantic_maps"]


def fuse_semantic_maps(maps, strides):
    """Sum of per-stage class logits, brought to the finest stage, then upsampled 4x.

    Each coarser map is upsampled by log2(stride / finest stride) successive 2x bilinear steps,
    then resized to the finest map; every resize uses align_corners=True, as the original.

    Args:
        maps: list of (B, K, H_i, W_i), finest first.
        strides: their strides, finest first.
    """
    fused = maps[0]
    for semantic_map, stride in zip(maps[1:], strides[1:]):
        for _ in range(max(1, int(math.log2(stride) - math.log2(strides[0])))):
            semantic_map = F.interpolate(semantic_map, scale_factor=2, mode="bilinear", align_corners=True)
        fused = fused + F.interpolate(semantic_map, size=fused.shape[-2:], mode="bilinear", align_corners=True)
    height, width = fused.shape[-2:]
    return F.interpolate(fused, size=(height * 4, width * 4), mode="bilinear", align_corners=True)


@SEM_SEG_HEADS_REGISTRY.register()
class BranchMaskFormerHead(MaskFormerHead):
    """Same configuration and parameters as `MaskFormerHead`.

    ``forward(features, semantic_maps)`` returns ``(predictions, semantic_logits)``:
    ``predictions`` as `MaskFormerHead`; ``semantic_logits`` (B, K, 4 H_2, 4 W_2) fused from
    ``semantic_maps`` (dict keyed like ``features``) in training, None otherwise.
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], **kwargs):
        super().__init__(input_shape, **kwargs)
        self.feature_strides = {name: shape.stride for name, shape in input_shape.items()}

    def forward(self, features, semantic_maps: Optional[Dict] = None, mask=None):
        predictions = self.layers(features, mask)
        if not self.training or semantic_maps is None:
            return predictions, None
        missing = [name for name in self.in_features if name not in semantic_maps]
        if missing:
            raise KeyError(f"BranchMaskFormerHead: the backbone gave no semantic map for {missing}; "
                           f"got {sorted(semantic_maps)}.")
        strides = [self.feature_strides[name] for name in self.in_features]
        return predictions, fuse_semantic_maps([semantic_maps[name] for name in self.in_features], strides)
