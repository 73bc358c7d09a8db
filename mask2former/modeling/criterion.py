"""Set-prediction losses of Mask2Former.

For every supervised prediction (the final one and, with deep supervision, each auxiliary one) the
queries are matched to the targets by :class:`HungarianMatcher`, then:

* ``loss_ce``: cross-entropy over K+1 classes for every query, unmatched queries labelled
  "no object" (class K) whose weight is ``eos_coef``;
* ``loss_mask`` / ``loss_dice``: sigmoid BCE and dice of the matched masks, evaluated on
  ``num_points`` points per mask chosen by uncertainty-based importance sampling (PointRend):
  ``oversample_ratio * num_points`` uniform candidates, the ``importance_sample_ratio`` fraction with
  the logits closest to 0, plus uniform random points for the rest. Both are normalised by the
  number of target masks in the batch averaged over workers (at least 1).

Random draws per supervised prediction, in order: the matcher's ``rand(1, P, 2)``, then
``rand(N, oversample_ratio * P, 2)`` and ``rand(N, P - importance_sample_ratio * P, 2)`` (N matched
masks). This is the reference implementation's order, so a seeded run reproduces its points.
"""
import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from torch import nn

from ..utils.misc import get_world_size, is_dist_avail_and_initialized, nested_tensor_from_tensor_list


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of ``1 - (2|x*y| + 1) / (|x| + |y| + 1)``, divided by ``num_masks``.

    Args:
        inputs: (N, P) logits; targets: (N, P) values in [0, 1].
    """
    probs = inputs.sigmoid().flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Point-averaged sigmoid BCE summed over masks, divided by ``num_masks``.

    Args:
        inputs: (N, P) logits; targets: (N, P) values in [0, 1].
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits (R, 1, ...) for importance sampling: highest where the logit is 0."""
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty expects class-agnostic logits (R, 1, ...), got {tuple(logits.shape)}")
    return -torch.abs(logits)


class SetCriterion(nn.Module):
    """Loss of Mask2Former (see module docstring).

    Args:
        num_classes: number of categories K, without "no object".
        matcher: module returning per-image (query indices, target indices).
        weight_dict: loss name -> weight; the meta-architecture multiplies the raw losses with it.
        eos_coef: cross-entropy weight of the "no object" class.
        losses: subset of ("labels", "masks").
        num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask losses.
    """

    def __init__(
        self,
        num_classes,
        matcher,
        weight_dict,
        eos_coef,
        losses,
        num_points,
        oversample_ratio,
        importance_sample_ratio,
    ):
        super().__init__()
        unknown = set(losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}; available: labels, masks")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # Persistent: published checkpoints carry "criterion.empty_weight".
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @staticmethod
    def _src_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    @staticmethod
    def _tgt_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(tgt, i) for i, (_, tgt) in enumerate(indices)])
        tgt_idx = torch.cat([tgt for _, tgt in indices])
        return batch_idx, tgt_idx

    def loss_labels(self, outputs, targets, indices, num_masks):
        src_logits = outputs["pred_logits"].float()
        batch_idx, src_idx = self._src_permutation_idx(indices)
        matched_classes = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)])
        target_classes = torch.full(
            src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device
        )
        target_classes[batch_idx.to(src_logits.device), src_idx.to(src_logits.device)] = matched_classes.to(
            src_logits.device
        )
        loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def sample_points(self, src_masks: torch.Tensor) -> torch.Tensor:
        """Importance-sampled point coordinates (N, num_points, 2) for mask logits (N, 1, h, w): the
        most uncertain of ``oversample_ratio * num_points`` uniform candidates (uncertainty of the
        interpolated logit, not interpolated uncertainty), then the uniform random rest."""
        num_masks = src_masks.shape[0]
        num_candidates = int(self.num_points * self.oversample_ratio)
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        candidates = torch.rand(num_masks, num_candidates, 2, device=src_masks.device)
        uncertainty = calculate_uncertainty(point_sample(src_masks, candidates, align_corners=False))[:, 0]
        # The chosen set is what matters (the losses average over points): an unsorted top-k is
        # the same set as a sorted one, at half the cost.
        chosen = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
        coords = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
        num_random = self.num_points - num_uncertain
        if num_random > 0:
            coords = torch.cat([coords, torch.rand(num_masks, num_random, 2, device=src_masks.device)], dim=1)
        return coords

    def matched_masks(self, outputs, targets, indices):
        """Mask logits (N, 1, h, w) of the matched queries and their target masks (N, 1, H, W)."""
        src_batch_idx, src_idx = self._src_permutation_idx(indices)
        tgt_batch_idx, tgt_idx = self._tgt_permutation_idx(indices)
        src_masks = outputs["pred_masks"][src_batch_idx, src_idx][:, None]
        masks = [t["masks"] for t in targets]
        if all(m.shape[1:] == masks[0].shape[1:] for m in masks):
            # The usual case (the meta-architecture pads all targets to the batch's size): select
            # the matched masks without padding the whole batch.
            target_masks = torch.cat([m[tgt] for m, (_, tgt) in zip(masks, indices)])
        else:
            target_masks = nested_tensor_from_tensor_list(masks).tensors[tgt_batch_idx, tgt_idx]
        return src_masks, target_masks.to(src_masks)[:, None]

    def loss_masks(self, outputs, targets, indices, num_masks):
        src_masks, target_masks = self.matched_masks(outputs, targets, indices)
        if src_masks.shape[0] == 0:
            # No target in the whole batch: zero losses that still reach the mask head's graph.
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}

        with torch.no_grad():
            point_coords = self.sample_points(src_masks)
            point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def get_loss(self, loss, outputs, targets, indices, num_masks):
        loss_fn = {"labels": self.loss_labels, "masks": self.loss_masks}[loss]
        return loss_fn(outputs, targets, indices, num_masks)

    def _num_masks(self, targets, device) -> float:
        num_masks = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if is_dist_avail_and_initialized():
            torch.distributed.all_reduce(num_masks)
        return torch.clamp(num_masks / get_world_size(), min=1).item()

    def forward(self, outputs, targets):
        """Losses of the final prediction (no suffix) and of ``outputs["aux_outputs"][i]`` (suffix ``_i``).

        Args:
            outputs: dict with ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w) and optionally
                ``aux_outputs``, a list of such dicts.
            targets: list of B dicts with ``labels`` (T_b,) int64 and ``masks`` (T_b, H, W).
        Returns:
            dict of unweighted scalar losses.
        """
        if targets is None:
            raise ValueError("SetCriterion: training needs targets (batched_inputs[i]['instances'])")
        final_outputs = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        # The matcher and the mask losses of every prediction read the targets in the masks' dtype:
        # convert them once, not once per prediction and consumer.
        targets = [{**t, "masks": t["masks"].to(outputs["pred_masks"])} for t in targets]

        losses = {}
        predictions = [("", final_outputs)]
        predictions += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        for suffix, prediction in predictions:
            indices = self.matcher(prediction, targets)
            for loss in self.losses:
                for name, value in self.get_loss(loss, prediction, targets, indices, num_masks).items():
                    losses[name + suffix] = value
        return losses

    def __repr__(self):
        lines = [
            f"matcher: {self.matcher!r}",
            f"losses: {self.losses}",
            f"weight_dict: {self.weight_dict}",
            f"num_classes: {self.num_classes}",
            f"eos_coef: {self.eos_coef}",
            f"num_points: {self.num_points}",
            f"oversample_ratio: {self.oversample_ratio}",
            f"importance_sample_ratio: {self.importance_sample_ratio}",
        ]
        return "Criterion " + self.__class__.__name__ + "\n" + "\n".join("    " + line for line in lines)
