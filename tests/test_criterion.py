"""SetCriterion against naive computations (per-pixel losses, weighted CE, sampling, normalisation)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling import criterion as criterion_module
from mask2former.modeling.criterion import SetCriterion, calculate_uncertainty
from mask2former.modeling.matcher import HungarianMatcher


def pixel_centre_points(n, h, w):
    centres_y = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    centres_x = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    ys, xs = torch.meshgrid(centres_y, centres_x, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)[None].double().repeat(n, 1, 1)


class FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def make_criterion(matcher, num_classes=4, eos_coef=0.1, num_points=12, losses=("labels", "masks")):
    return SetCriterion(
        num_classes=num_classes,
        matcher=matcher,
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef=eos_coef,
        losses=list(losses),
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def test_losses_equal_naive_per_pixel_losses_when_points_are_pixel_centres():
    g = torch.Generator().manual_seed(0)
    h, w, num_classes = 4, 5, 4
    outputs = {
        "pred_logits": torch.randn(2, 3, num_classes + 1, generator=g),
        "pred_masks": torch.randn(2, 3, h, w, generator=g, dtype=torch.float64) * 2,
    }
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": torch.rand(2, h, w, generator=g) > 0.5},
        {"labels": torch.tensor([3]), "masks": torch.rand(1, h, w, generator=g) > 0.5},
    ]
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([0]))]
    criterion = make_criterion(FixedMatcher(indices), num_points=h * w)
    criterion.sample_points = lambda src_masks: pixel_centre_points(src_masks.shape[0], h, w)
    losses = criterion(outputs, targets)

    num_masks = 3
    bce_total, dice_total = 0.0, 0.0
    for b, (queries, tgts) in enumerate(indices):
        for q, t in zip(queries.tolist(), tgts.tolist()):
            x = outputs["pred_masks"][b, q].flatten().tolist()
            y = targets[b]["masks"][t].flatten().double().tolist()
            p = [1 / (1 + math.exp(-a)) for a in x]
            bce_total += sum(-(yy * math.log(pp) + (1 - yy) * math.log(1 - pp)) for pp, yy in zip(p, y)) / len(x)
            dice_total += 1 - (2 * sum(a * c for a, c in zip(p, y)) + 1) / (sum(p) + sum(y) + 1)
    assert losses["loss_mask"].item() == pytest.approx(bce_total / num_masks, rel=1e-10)
    assert losses["loss_dice"].item() == pytest.approx(dice_total / num_masks, rel=1e-10)

    # Weighted cross-entropy: matched queries get their target class, the rest "no object" (class 4,
    # weight 0.1); the mean is weighted by the per-sample class weights.
    weighted_sum, weight_total = 0.0, 0.0
    for b in range(2):
        matched = dict(zip(indices[b][0].tolist(), targets[b]["labels"][indices[b][1]].tolist()))
        for q in range(3):
            label = matched.get(q, num_classes)
            logp = torch.log_softmax(outputs["pred_logits"][b, q], -1)[label].item()
            weight = 0.1 if label == num_classes else 1.0
            weighted_sum += -weight * logp
            weight_total += weight
    # The class loss runs in fp32 (logits are cast with .float(), as in the reference).
    assert losses["loss_ce"].item() == pytest.approx(weighted_sum / weight_total, rel=1e-6)


def test_targets_of_different_sizes_are_zero_padded_like_a_batch():
    """Targets of unequal sizes are padded at the bottom/right (the nested-tensor path); the same
    targets padded by hand take the path that selects without padding: equal losses."""
    g = torch.Generator().manual_seed(5)
    outputs = {"pred_logits": torch.randn(2, 3, 5, generator=g), "pred_masks": torch.randn(2, 3, 6, 8, generator=g)}
    masks = [torch.rand(2, 10, 16, generator=g) > 0.5, torch.rand(1, 12, 13, generator=g) > 0.5]
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([0]))]
    padded = [F.pad(m, (0, 16 - m.shape[2], 0, 12 - m.shape[1])) for m in masks]
    labels = [torch.tensor([2, 0]), torch.tensor([3])]
    points = torch.rand(3, 12, 2, generator=g)
    losses = []
    for target_masks in (masks, padded):
        criterion = make_criterion(FixedMatcher(indices))
        criterion.sample_points = lambda src_masks: points
        targets = [{"labels": lab, "masks": m} for lab, m in zip(labels, target_masks)]
        losses.append(criterion(outputs, targets))
    assert losses[0].keys() == losses[1].keys()
    for key in losses[0]:
        assert torch.equal(losses[0][key], losses[1][key]), key


def test_importance_sampling_picks_the_most_uncertain_candidates():
    g = torch.Generator().manual_seed(3)
    src_masks = torch.randn(2, 1, 7, 9, generator=g)
    criterion = make_criterion(FixedMatcher(None), num_points=40)
    torch.manual_seed(11)
    points = criterion.sample_points(src_masks)
    torch.manual_seed(11)
    candidates = torch.rand(2, 120, 2)
    random_tail = torch.rand(2, 10, 2)

    assert points.shape == (2, 40, 2)
    assert torch.equal(points[:, 30:], random_tail)
    for n in range(2):
        grid = 2 * candidates[n : n + 1, None] - 1
        logits = F.grid_sample(src_masks[n : n + 1], grid, align_corners=False)[0, 0, 0]
        order = sorted(range(120), key=lambda i: abs(logits[i].item()))
        expected = {tuple(candidates[n, i].tolist()) for i in order[:30]}
        assert {tuple(p) for p in points[n, :30].tolist()} == expected
    assert torch.equal(calculate_uncertainty(torch.tensor([[[-2.0, 0.5]]])), torch.tensor([[[-2.0, -0.5]]]))


def test_deep_supervision_names_and_matcher_per_prediction():
    g = torch.Generator().manual_seed(0)

    def prediction():
        return {
            "pred_logits": torch.randn(1, 4, 3, generator=g),
            "pred_masks": torch.randn(1, 4, 6, 6, generator=g),
        }

    outputs = prediction()
    outputs["aux_outputs"] = [prediction(), prediction()]
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 12, 12, dtype=torch.bool)}]
    calls = []
    matcher = HungarianMatcher(num_points=8)
    original = matcher.forward

    def spy(out, tgt):
        calls.append(out["pred_logits"])
        assert "aux_outputs" not in out
        return original(out, tgt)

    matcher.forward = spy
    losses = make_criterion(matcher, num_classes=2)(outputs, targets)
    assert list(losses) == [
        "loss_ce", "loss_mask", "loss_dice",
        "loss_ce_0", "loss_mask_0", "loss_dice_0",
        "loss_ce_1", "loss_mask_1", "loss_dice_1",
    ]
    expected = [outputs["pred_logits"]] + [a["pred_logits"] for a in outputs["aux_outputs"]]
    assert len(calls) == 3 and all(c is e for c, e in zip(calls, expected))


def test_num_masks_is_averaged_over_workers_and_clamped(monkeypatch):
    criterion = make_criterion(FixedMatcher(None))
    targets = [{"labels": torch.tensor([0, 1, 2])}]
    assert criterion._num_masks(targets, "cpu") == 3.0
    assert criterion._num_masks([{"labels": torch.zeros(0)}], "cpu") == 1.0

    # Two workers holding 3 and 6 masks: every worker normalises by 4.5.
    monkeypatch.setattr(criterion_module, "is_dist_avail_and_initialized", lambda: True)
    monkeypatch.setattr(criterion_module, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(6.0))
    assert criterion._num_masks(targets, "cpu") == 4.5


def test_empty_weight_buffer_is_persistent_and_gradients_flow():
    criterion = make_criterion(HungarianMatcher(num_points=8), num_classes=3, eos_coef=0.25)
    assert torch.equal(criterion.state_dict()["empty_weight"], torch.tensor([1.0, 1.0, 1.0, 0.25]))
    logits = torch.randn(1, 4, 4, requires_grad=True)
    masks = torch.randn(1, 4, 6, 6, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 12, 12, dtype=torch.bool)}]
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, targets)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    sum(losses.values()).backward()
    assert masks.grad is not None and logits.grad.abs().sum() > 0


def test_missing_targets_and_unknown_losses_are_clear_errors():
    with pytest.raises(ValueError, match="unknown losses"):
        make_criterion(FixedMatcher(None), losses=["labels", "boxes"])
    with pytest.raises(ValueError, match="needs targets"):
        outputs = {"pred_logits": torch.zeros(1, 2, 5), "pred_masks": torch.zeros(1, 2, 4, 4)}
        make_criterion(FixedMatcher(None))(outputs, None)


def _num_masks_worker(out_dir):
    rank = torch.distributed.get_rank()
    criterion = make_criterion(FixedMatcher(None))
    # Rank 0 holds 1 target mask, rank 1 holds 4: both must normalise by (1 + 4) / 2.
    targets = [{"labels": torch.zeros(1 + 3 * rank, dtype=torch.int64)}]
    with open(f"{out_dir}/rank{rank}.txt", "w") as f:
        f.write(repr(criterion._num_masks(targets, "cpu")))


@pytest.mark.slow
def test_num_masks_is_averaged_over_real_gloo_workers(tmp_path):
    from mask2former.utils.launch import launch

    launch(_num_masks_worker, 2, dist_url="auto", args=(str(tmp_path),))
    assert [float((tmp_path / f"rank{r}.txt").read_text()) for r in range(2)] == [2.5, 2.5]
