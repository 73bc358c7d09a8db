"""Matcher and criterion against the reference implementation's recorded training forward.

tests/data/golden/tiny_swin_panoptic/losses.pth holds, for each of the four supervised predictions,
the matcher's points/costs/indices, the criterion's random draws and chosen points, and the raw
losses. The head outputs they were computed from are in outputs.pth (train- and eval-mode head
outputs are bit-identical for this model).
"""
import os

import pytest
import torch

from mask2former.modeling.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from mask2former.modeling.matcher import HungarianMatcher

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_swin_panoptic")
LAYER_NAMES = ["final", "aux_0", "aux_1", "aux_2"]


@pytest.fixture(scope="module")
def golden():
    losses = torch.load(os.path.join(GOLDEN, "losses.pth"), weights_only=True)
    outputs = torch.load(os.path.join(GOLDEN, "outputs.pth"), weights_only=True)
    head_outputs = {
        "pred_logits": outputs["pred_logits"],
        "pred_masks": outputs["pred_masks"],
        "aux_outputs": outputs["aux_outputs"],
    }
    targets = [{"labels": losses["targets"]["labels"], "masks": losses["targets"]["masks"]}]
    return losses, head_outputs, targets


def make_criterion(weight_dict):
    # Values of tests/data/golden/tiny_swin_panoptic/config.yaml.
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=1024)
    return SetCriterion(
        num_classes=7,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=0.1,
        losses=["labels", "masks"],
        num_points=1024,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def layer_outputs(head_outputs, name):
    if name == "final":
        return {"pred_logits": head_outputs["pred_logits"], "pred_masks": head_outputs["pred_masks"]}
    return head_outputs["aux_outputs"][int(name.split("_")[1])]


def sorted_rows(t):
    """Rows of a (P, C) tensor in lexicographic order (point sets whose order may legally differ)."""
    order = sorted(range(t.shape[0]), key=lambda i: tuple(t[i].tolist()))
    return t[order]


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_matcher_costs_and_indices_with_recorded_points(golden, name):
    losses, head_outputs, targets = golden
    ref = losses["layers"][name]
    matcher = make_criterion(losses["weight_dict"]).matcher
    matcher.sample_points = lambda device: ref["matcher_point_coords"].to(device)
    out = layer_outputs(head_outputs, name)

    costs = matcher.compute_costs(
        out["pred_logits"][0], out["pred_masks"][0], targets[0]["labels"], targets[0]["masks"]
    )
    for key in ["cost_class", "cost_mask", "cost_dice", "cost_matrix"]:
        torch.testing.assert_close(costs[key], ref[key], rtol=1e-5, atol=2e-6, msg=key)

    (query_idx, target_idx), = matcher(out, targets)
    assert query_idx.tolist() == ref["matcher_indices"][0].tolist()
    assert target_idx.tolist() == ref["matcher_indices"][1].tolist()


def test_seeded_criterion_reproduces_every_random_draw_and_loss(golden):
    """Same seed, same draw order: the points and losses of the reference run are reproduced."""
    losses, head_outputs, targets = golden
    criterion = make_criterion(losses["weight_dict"])

    recorded = {"matcher": [], "criterion": []}
    matcher_sample, criterion_sample = criterion.matcher.sample_points, criterion.sample_points

    def record_matcher(device):
        recorded["matcher"].append(matcher_sample(device))
        return recorded["matcher"][-1]

    def record_criterion(src_masks):
        recorded["criterion"].append(criterion_sample(src_masks))
        return recorded["criterion"][-1]

    criterion.matcher.sample_points = record_matcher
    criterion.sample_points = record_criterion

    torch.manual_seed(losses["rng"]["seed"])
    raw = criterion(head_outputs, targets)
    after = torch.rand(8)
    # The generator advanced exactly by the 12 reference draws.
    torch.manual_seed(losses["rng"]["seed"])
    for call in losses["rng"]["torch_rand_calls"]:
        torch.rand(call["shape"])
    assert torch.equal(after, torch.rand(8))

    assert list(raw) == losses["loss_order"]
    for key, value in losses["raw_losses"].items():
        torch.testing.assert_close(raw[key], value, rtol=1e-5, atol=0, msg=key)

    for i, name in enumerate(LAYER_NAMES):
        ref = losses["layers"][name]
        assert torch.equal(recorded["matcher"][i], ref["matcher_point_coords"])
        ours = recorded["criterion"][i]
        assert ours.shape == ref["criterion_point_coords"].shape
        # The random tail is an exact copy of the second draw; the importance-sampled head is the
        # same set of points (its order may differ where uncertainties tie to ~1e-7, README 2.8).
        num_uncertain = 768
        assert torch.equal(ours[:, num_uncertain:], ref["criterion_random_coords"])
        for n in range(ours.shape[0]):
            torch.testing.assert_close(
                sorted_rows(ours[n, :num_uncertain]), sorted_rows(ref["criterion_point_coords"][n, :num_uncertain])
            )


def test_criterion_losses_with_injected_points(golden):
    """The loss math alone: reference points injected into both the matcher and the mask losses."""
    losses, head_outputs, targets = golden
    criterion = make_criterion(losses["weight_dict"])
    matcher_points = iter([losses["layers"][n]["matcher_point_coords"] for n in LAYER_NAMES])
    criterion_points = iter([losses["layers"][n]["criterion_point_coords"] for n in LAYER_NAMES])
    criterion.matcher.sample_points = lambda device: next(matcher_points)
    criterion.sample_points = lambda src_masks: next(criterion_points)

    raw = criterion(head_outputs, targets)
    for key, value in losses["raw_losses"].items():
        torch.testing.assert_close(raw[key], value, rtol=1e-5, atol=0, msg=key)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_point_losses_from_recorded_point_values(golden, name):
    """BCE and dice from the recorded sampled logits/labels (independent of point sampling)."""
    losses, _, _ = golden
    ref = losses["layers"][name]
    suffix = "" if name == "final" else "_" + name.split("_")[1]
    num_masks = losses["num_masks"]
    logits, labels = ref["criterion_point_logits"], ref["criterion_point_labels"]
    torch.testing.assert_close(
        sigmoid_ce_loss(logits, labels, num_masks), losses["raw_losses"]["loss_mask" + suffix], rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        dice_loss(logits, labels, num_masks), losses["raw_losses"]["loss_dice" + suffix], rtol=1e-5, atol=0
    )


def _msda_cpu_backends():
    from mask2former.modeling.pixel_decoder.ops import backend

    return [name for name in backend.available_backends() if name in ("cpu", "pytorch")]


@pytest.mark.slow
@pytest.mark.parametrize("msda_backend", _msda_cpu_backends())
def test_full_model_training_forward_losses_and_gradients(golden, msda_backend):
    """End to end: image -> MaskFormer.forward (train) -> weighted losses -> gradients, with each
    multi-scale deformable attention path this machine can run on CPU.

    The reference ran that op through its pure-PyTorch (grid_sample) path. At this initialisation
    many sampling locations sit exactly on bilinear kinks, where the one-sided gradient depends on
    the last bit of the pixel coordinate: the CPU kernel rounds it exactly as grid_sample does, so
    it must reproduce the recorded gradients too.
    """
    from detectron2.structures import Instances

    from mask2former.modeling.pixel_decoder.ops import backend

    from test_golden_postprocess import build_golden_model

    losses, _, _ = golden
    model = build_golden_model().train()
    image = torch.load(os.path.join(GOLDEN, "input.pth"), weights_only=True)["image_hwc_uint8"].permute(2, 0, 1)
    instances = Instances((128, 160))
    instances.gt_classes = losses["targets"]["labels"]
    instances.gt_masks = losses["targets"]["masks"]

    torch.manual_seed(losses["rng"]["seed"])
    with backend.use_backend(msda_backend):
        loss_dict = model([{"image": image, "instances": instances}])
        total = sum(loss_dict.values())
        total.backward()
    assert list(loss_dict) == losses["loss_order"]
    for key, value in losses["loss_dict"].items():
        torch.testing.assert_close(loss_dict[key], value, rtol=1e-5, atol=0, msg=key)
    torch.testing.assert_close(total, losses["total_loss"], rtol=1e-5, atol=0)

    params = dict(model.named_parameters())
    assert [n for n, p in params.items() if p.grad is None] == losses["params_without_grad"]
    for name, norm in losses["grad_norms"].items():
        assert params[name].grad.norm().item() == pytest.approx(norm, rel=1e-4, abs=1e-5), name
    for name, grad in losses["named_grads"].items():
        torch.testing.assert_close(params[name].grad, grad, rtol=1e-4, atol=1e-5, msg=name)
    total_norm = torch.stack([p.grad.norm() for p in params.values()]).norm().item()
    assert total_norm == pytest.approx(losses["total_grad_norm"], rel=1e-5)
