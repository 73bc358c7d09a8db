"""HungarianMatcher against naive per-pixel costs and brute-force assignment."""
import itertools
import math

import pytest
import torch

from mask2former.modeling.matcher import HungarianMatcher, pairwise_dice_cost, pairwise_sigmoid_ce_cost


def naive_bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def pixel_centre_points(h, w):
    """Point coordinates hitting every pixel centre exactly (point_sample then reads raw pixels)."""
    centres_y = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    centres_x = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    ys, xs = torch.meshgrid(centres_y, centres_x, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)[None].double()


def test_pairwise_costs_against_naive_loops():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(3, 9, generator=g, dtype=torch.float64) > 0.5).double()
    bce = pairwise_sigmoid_ce_cost(inputs, targets)
    dice = pairwise_dice_cost(inputs, targets)
    for n in range(4):
        for m in range(3):
            x, y = inputs[n].tolist(), targets[m].tolist()
            expected_bce = sum(naive_bce(a, b) for a, b in zip(x, y)) / len(x)
            p = [1 / (1 + math.exp(-a)) for a in x]
            expected_dice = 1 - (2 * sum(a * b for a, b in zip(p, y)) + 1) / (sum(p) + sum(y) + 1)
            assert bce[n, m].item() == pytest.approx(expected_bce, rel=1e-10)
            assert dice[n, m].item() == pytest.approx(expected_dice, rel=1e-10)


def test_sigmoid_ce_cost_at_extreme_logits_in_float32():
    """Saturated logits (the softplus term is computed without softplus): finite, and equal to the
    float64 BCE with torch's softplus to float32 precision."""
    g = torch.Generator().manual_seed(1)
    extremes = torch.tensor([-1e4, -200.0, -30.0, -1e-6, 0.0, 1e-6, 30.0, 200.0, 1e4])
    inputs = torch.cat([extremes, torch.randn(991, generator=g) * 8])
    inputs = inputs[torch.randperm(1000, generator=g)].reshape(4, 250)
    targets = (torch.rand(3, 250, generator=g) > 0.5).float()
    cost = pairwise_sigmoid_ce_cost(inputs, targets)
    x, y = inputs.double(), targets.double()
    expected = (torch.nn.functional.softplus(x).sum(-1)[:, None] - x @ y.T) / 250
    assert torch.isfinite(cost).all()
    torch.testing.assert_close(cost.double(), expected, rtol=1e-6, atol=1e-6)


def test_costs_on_pixel_centres_equal_full_mask_costs():
    """With points on every pixel centre the point costs are the full-mask costs."""
    g = torch.Generator().manual_seed(1)
    h, w = 5, 6
    pred_logits = torch.randn(3, 5, generator=g, dtype=torch.float64)
    pred_masks = torch.randn(3, h, w, generator=g, dtype=torch.float64) * 2
    tgt_masks = torch.rand(2, h, w, generator=g) > 0.5
    tgt_labels = torch.tensor([4, 1])
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=3, num_points=h * w)
    matcher.sample_points = lambda device: pixel_centre_points(h, w)
    costs = matcher.compute_costs(pred_logits, pred_masks, tgt_labels, tgt_masks)

    prob = torch.softmax(pred_logits, -1)
    for q in range(3):
        for t in range(2):
            x = pred_masks[q].flatten().tolist()
            y = tgt_masks[t].flatten().double().tolist()
            bce = sum(naive_bce(a, b) for a, b in zip(x, y)) / len(x)
            p = [1 / (1 + math.exp(-a)) for a in x]
            dice = 1 - (2 * sum(a * b for a, b in zip(p, y)) + 1) / (sum(p) + sum(y) + 1)
            cls = -prob[q, tgt_labels[t]].item()
            # The mask costs are computed in fp32 (as the reference does, even under autocast).
            assert costs["cost_mask"][q, t].item() == pytest.approx(bce, rel=1e-6)
            assert costs["cost_dice"][q, t].item() == pytest.approx(dice, rel=1e-6)
            assert costs["cost_class"][q, t].item() == pytest.approx(cls, rel=1e-12)
            assert costs["cost_matrix"][q, t].item() == pytest.approx(5 * bce + 2 * cls + 3 * dice, rel=1e-6)


@pytest.mark.parametrize("num_queries,num_targets,seed", [(4, 3, 0), (5, 5, 1), (3, 4, 2), (6, 2, 3)])
def test_assignment_is_the_brute_force_optimum(num_queries, num_targets, seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 8, 8
    outputs = {
        "pred_logits": torch.randn(1, num_queries, 4, generator=g),
        "pred_masks": torch.randn(1, num_queries, h, w, generator=g) * 3,
    }
    targets = [
        {
            "labels": torch.randint(0, 3, (num_targets,), generator=g),
            "masks": torch.rand(num_targets, h, w, generator=g) > 0.5,
        }
    ]
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=h * w)
    points = pixel_centre_points(h, w).float()
    matcher.sample_points = lambda device: points
    cost = matcher.compute_costs(
        outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"], targets[0]["masks"]
    )["cost_matrix"]

    (query_idx, target_idx), = matcher(outputs, targets)
    assert len(query_idx) == min(num_queries, num_targets)
    assert query_idx.tolist() == sorted(query_idx.tolist())
    ours = cost[query_idx, target_idx].sum().item()
    # Brute force over every injective assignment of the smaller side.
    best = math.inf
    if num_targets <= num_queries:
        for perm in itertools.permutations(range(num_queries), num_targets):
            best = min(best, sum(cost[q, t].item() for t, q in enumerate(perm)))
    else:
        for perm in itertools.permutations(range(num_targets), num_queries):
            best = min(best, sum(cost[q, t].item() for q, t in enumerate(perm)))
    assert ours == pytest.approx(best, abs=1e-5)


def test_batch_with_an_image_without_targets():
    outputs = {"pred_logits": torch.randn(2, 3, 4), "pred_masks": torch.randn(2, 3, 6, 6)}
    targets = [
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 12, 12, dtype=torch.bool)},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 12, 12, dtype=torch.bool)},
    ]
    indices = HungarianMatcher(num_points=16)(outputs, targets)
    assert [len(i) for i, _ in indices] == [1, 0]
    assert indices[1][0].dtype == torch.int64


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(0, 0, 0, num_points=4)
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(num_points=0)
    with pytest.raises(ValueError, match="2 predictions in the batch but 1 targets"):
        HungarianMatcher(num_points=4)(
            {"pred_logits": torch.randn(2, 3, 4), "pred_masks": torch.randn(2, 3, 4, 4)},
            [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}],
        )


def naive_bilinear(mask, x, y):
    """grid_sample's bilinear value (align_corners=False, zeros outside) of one (H, W) mask at
    normalised (x, y) in [0, 1], by hand in float64."""
    h, w = mask.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    value = 0.0
    for xi, wx in ((x0, x0 + 1 - px), (x0 + 1, px - x0)):
        for yi, wy in ((y0, y0 + 1 - py), (y0 + 1, py - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                value += wx * wy * float(mask[yi, xi])
    return value


def test_point_values_against_naive_bilinear_and_point_sample():
    """The matcher's per-mask sampling gives detectron2's point_sample values bit for bit, and
    those are the bilinear interpolation computed by hand (points on the border included)."""
    from detectron2.projects.point_rend.point_features import point_sample

    g = torch.Generator().manual_seed(3)
    masks = torch.randn(100, 37, 41, generator=g) * 4
    coords = torch.rand(1, 500, 2, generator=g)
    coords[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.0]])
    values = HungarianMatcher(num_points=500).point_values(masks, coords)
    assert values.shape == (100, 500)
    assert torch.equal(values, point_sample(masks[None], coords, align_corners=False)[0])
    for n in (0, 57, 99):
        expected = [naive_bilinear(masks[n].double(), x, y) for x, y in coords[0].double().tolist()]
        # grid_sample locates the points in float32: 1e-6 pixel, times slopes of up to ~20 here.
        torch.testing.assert_close(values[n].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-4)
