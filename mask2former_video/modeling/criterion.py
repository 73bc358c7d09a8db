"""Losses of video instance segmentation (Mask2Former for video).

As the image :class:`SetCriterion`, with one target per video instance whose masks are (T, H, W):
the classification loss is unchanged; for the mask losses every (matched query, frame) pair is one
mask, point-sampled by importance on its own, and the sums over all of them are divided by the
number of video instances (not by instances x frames).
"""
import torch

from mask2former.modeling.criterion import SetCriterion


class VideoSetCriterion(SetCriterion):
    def matched_masks(self, outputs, targets, indices):
        """Mask logits (N*T, 1, h, w) of the matched queries, frame by frame, and their target masks
        (N*T, 1, H, W); the meta-architecture pads all targets of a batch to one size."""
        batch_idx, src_idx = self._src_permutation_idx(indices)
        src_masks = outputs["pred_masks"][batch_idx, src_idx]  # (N, T, h, w)
        target_masks = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(src_masks)
        return src_masks.flatten(0, 1)[:, None], target_masks.flatten(0, 1)[:, None]
