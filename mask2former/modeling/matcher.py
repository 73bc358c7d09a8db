"""Hungarian matching between predicted masks and ground-truth segments (Mask2Former).

The cost of assigning query ``q`` to target ``t`` is

    cost_mask * BCE(q, t) + cost_class * (-p_q(class_t)) + cost_dice * Dice(q, t)

where BCE and Dice are computed on ``num_points`` points drawn uniformly in [0, 1]^2 — the same
points for every prediction and every target of an image — instead of on full masks, which keeps
the cost matrix cheap at any resolution.
"""
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def pairwise_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every (prediction, target) pair.

    Args:
        inputs: (N, P) mask logits.
        targets: (M, P) binary (or soft) target values.
    Returns:
        (N, M) cost, ``1 - (2|x*y| + 1) / (|x| + |y| + 1)`` with ``x = sigmoid(inputs)``.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs @ targets.T)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Point-averaged sigmoid binary cross-entropy of every (prediction, target) pair.

    Args:
        inputs: (N, P) mask logits.
        targets: (M, P) binary (or soft) target values.
    Returns:
        (N, M) cost.
    """
    num_points = inputs.shape[1]
    # BCE(x, y) = softplus(x) - x * y: the sum over points of the first term does not depend on
    # the target, the second is one matrix product for all pairs.
    # softplus(x) = max(x, 0) - log(sigmoid(|x|)): the log of a value in [0.5, 1], so no overflow
    # at any logit and an absolute error of about an ulp of 1 per point, nothing in a sum over
    # thousands of points; unlike torch's softplus (scalar exp/log1p on CPU) it is vectorised,
    # several times faster over the matcher's (Q, P) logits.
    softplus_sums = inputs.clamp(min=0).sum(-1) - inputs.abs().sigmoid_().log_().sum(-1)
    cost = softplus_sums[:, None] - inputs @ targets.T
    return cost / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted class + mask cost.

    Each image draws one ``torch.rand(1, num_points, 2)`` on the masks' device (the only random
    draw of the matcher); the reference implementation does the same, so seeded runs match it.
    """

    def __init__(self, cost_class: float = 1, cost_mask: float = 1, cost_dice: float = 1, num_points: int = 0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0, the assignment would be arbitrary")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def sample_points(self, device) -> torch.Tensor:
        """Uniform point coordinates (1, num_points, 2), (x, y) in [0, 1]."""
        return torch.rand(1, self.num_points, 2, device=device)

    def point_values(self, masks: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
        """Values (N, P) of masks (N, H, W) at the points (1, P, 2), bilinearly interpolated
        (detectron2's ``point_sample(masks[None], point_coords)[0]``, bit for bit)."""
        # Every mask is a batch entry of its own, all reading one grid, rather than a channel of a
        # single image: grid_sample then reads one (H, W) plane at a time instead of all of them
        # at every point, and spreads the masks over threads instead of running on one. For 100
        # queries at 128x128 and 12,544 points on the 2-thread CPU that is 2-6x faster, although
        # the bilinear weights are computed once per mask; each value comes from the same
        # arithmetic either way.
        grid = 2.0 * point_coords[:, :, None] - 1.0
        values = F.grid_sample(masks[:, None], grid.expand(masks.shape[0], -1, -1, -1), align_corners=False)
        return values.view(masks.shape[0], -1)

    def compute_costs(self, pred_logits, pred_masks, tgt_labels, tgt_masks):
        """Costs of one image.

        Args:
            pred_logits: (Q, K+1) class logits.
            pred_masks: (Q, h, w) mask logits.
            tgt_labels: (T,) int64 class ids.
            tgt_masks: (T, H, W) target masks (any dtype; H, W may differ from h, w).
        Returns:
            dict with ``point_coords`` (1, P, 2), ``cost_class``, ``cost_mask``, ``cost_dice`` and
            the weighted ``cost_matrix``, all (Q, T).
        """
        class_prob = pred_logits.softmax(-1)
        cost_class = -class_prob[:, tgt_labels]

        point_coords = self.sample_points(pred_masks.device)
        tgt_masks = tgt_masks.to(pred_masks)
        num_queries, num_targets = pred_masks.shape[0], tgt_masks.shape[0]
        pred_points = self.point_values(pred_masks, point_coords)
        if num_targets > 0:
            tgt_points = self.point_values(tgt_masks, point_coords)
        else:
            tgt_points = pred_points.new_zeros((0, pred_points.shape[1]))
        # Costs in fp32 even under autocast: BCE and dice are unstable in half precision.
        with torch.autocast(device_type=pred_points.device.type, enabled=False):
            pred_points = pred_points.float()
            tgt_points = tgt_points.float()
            cost_mask = pairwise_sigmoid_ce_cost(pred_points, tgt_points)
            cost_dice = pairwise_dice_cost(pred_points, tgt_points)
        cost_matrix = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        return {
            "point_coords": point_coords,
            "cost_class": cost_class,
            "cost_mask": cost_mask,
            "cost_dice": cost_dice,
            "cost_matrix": cost_matrix.reshape(num_queries, -1),
        }

    @torch.no_grad()
    def forward(self, outputs, targets):
        """Match every image of the batch.

        Args:
            outputs: dict with ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, h, w).
            targets: list of B dicts with ``labels`` (T_b,) and ``masks`` (T_b, H, W).
        Returns:
            list of B pairs ``(query_indices, target_indices)`` (int64, sorted by query index) of
            length ``min(Q, T_b)``.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {pred_logits.shape[0]} predictions in the batch but {len(targets)} targets"
            )
        indices = []
        for b, target in enumerate(targets):
            costs = self.compute_costs(pred_logits[b], pred_masks[b], target["labels"], target["masks"])
            query_idx, target_idx = linear_sum_assignment(costs["cost_matrix"].cpu())
            indices.append(
                (torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64))
            )
        return indices

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points})"
        )
