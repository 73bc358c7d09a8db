"""`SeMaskMaskFormer`: Mask2Former with a SeMask backbone and its semantic-prior loss.

The backbone (`D2SeMaskSwinTransformer`) returns stage features and stage semantic maps; the head
(`BranchMaskFormerHead`) fuses the maps in training. The extra loss ``loss_cate`` is the pixel
cross-entropy of the fused map against the semantic ground truth, weighted by
MODEL.MASK_FORMER.CATE_WEIGHT. It is computed for the final prediction only (the original adds
zero-valued copies for the auxiliary predictions, which change nothing). Inference is exactly
`MaskFormer`'s: the semantic branch is not used.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from .maskformer_model import MaskFormer
from .modeling.backbone.semask_swin import D2SeMaskSwinTransformer

__all__ = ["SeMaskMaskFormer"]


@META_ARCH_REGISTRY.register()
class SeMaskMaskFormer(MaskFormer):
    @configurable
    def __init__(self, *, semantic_loss_weight: float, ignore_value: int, **kwargs):
        """
        Args:
            semantic_loss_weight: weight of ``loss_cate`` (MODEL.MASK_FORMER.CATE_WEIGHT).
            ignore_value: semantic label ignored by ``loss_cate`` (MODEL.SEM_SEG_HEAD.IGNORE_VALUE).
            kwargs: as `MaskFormer`.
        """
        super().__init__(**kwargs)
        if not isinstance(self.backbone, D2SeMaskSwinTransformer):
            raise ValueError(
                "SeMaskMaskFormer needs a backbone that returns semantic maps "
                f"(MODEL.BACKBONE.NAME: D2SeMaskSwinTransformer), got {type(self.backbone).__name__}."
            )
        self.semantic_loss_weight = semantic_loss_weight
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        args["semantic_loss_weight"] = cfg.MODEL.MASK_FORMER.CATE_WEIGHT
        args["ignore_value"] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return args

    def forward(self, batched_inputs: List[Dict]):
        """As `MaskFormer.forward`; training also needs ``sem_seg`` (H, W) in every input and
        returns ``loss_cate`` with the weighted mask-classification losses."""
        if not self.training:
            return super().forward(batched_inputs)
        if any("sem_seg" not in x for x in batched_inputs):
            raise KeyError("SeMaskMaskFormer: training needs semantic ground truth 'sem_seg' in every "
                           "input (use a semantic dataset mapper, e.g. mask_former_semantic).")
        images = self.preprocess_image(batched_inputs)
        features, semantic_maps = self.backbone(images.tensor)
        outputs, semantic_logits = self.sem_seg_head(features, semantic_maps)

        targets = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.prepare_targets(gt_instances, images)
        losses = self.criterion(outputs, targets)
        weight_dict = self.criterion.weight_dict
        losses = {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}
        losses["loss_cate"] = self.semantic_loss(semantic_logits, batched_inputs) * self.semantic_loss_weight
        return losses

    def semantic_loss(self, semantic_logits, batched_inputs):
        """Cross-entropy of (B, K, H, W) logits against the ``sem_seg`` maps, padded with the
        ignore value to the logits' size."""
        height, width = semantic_logits.shape[-2:]
        gt = torch.full((len(batched_inputs), height, width), self.ignore_value,
                        dtype=torch.long, device=self.device)
        for i, x in enumerate(batched_inputs):
            sem_seg = x["sem_seg"]
            if sem_seg.dim() != 2 or sem_seg.shape[0] > height or sem_seg.shape[1] > width:
                raise ValueError(f"SeMaskMaskFormer: batched_inputs[{i}]['sem_seg'] has shape "
                                 f"{tuple(sem_seg.shape)}; expected (H, W) within the padded "
                                 f"image ({height}, {width}).")
            gt[i, : sem_seg.shape[0], : sem_seg.shape[1]] = sem_seg.to(self.device)
        return F.cross_entropy(semantic_logits, gt, ignore_index=self.ignore_value)

    def head_outputs(self, images: torch.Tensor) -> Dict:
        # The backbone's and the head's semantic predictions only serve the training loss.
        features, _ = self.backbone(images)
        outputs, _ = self.sem_seg_head(features)
        return outputs
