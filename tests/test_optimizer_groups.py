"""build_optimizer groups parameters whose learning rate and weight decay are equal. Each parameter
must get the hyper-parameters of upstream's rules (written out by hand below) and the same updates,
bit for bit, as upstream's one-group-per-parameter optimizer."""
import copy

import pytest
import torch
from torch import nn

from mask2former.engine import build_optimizer, load_config

BASE_LR, BACKBONE_MULTIPLIER = 1e-3, 0.1
WEIGHT_DECAY, WEIGHT_DECAY_NORM, WEIGHT_DECAY_EMBED = 0.05, 0.0, 0.01


class _SwinLikeBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.randn(7, 2))
        self.proj = nn.Linear(4, 4)


class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), _SwinLikeBlock())
        self.head = nn.Linear(4, 5)
        self.head_again = self.head  # a shared module: its parameters are optimized once
        self.norm = nn.LayerNorm(5)
        self.group_norm = nn.GroupNorm(2, 4)
        self.embed = nn.Embedding(3, 5)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


# (lr, weight decay) of every trainable parameter, by upstream's rules.
EXPECTED = {
    "backbone.0.weight": (BASE_LR * BACKBONE_MULTIPLIER, WEIGHT_DECAY),
    "backbone.0.bias": (BASE_LR * BACKBONE_MULTIPLIER, WEIGHT_DECAY),
    "backbone.1.weight": (BASE_LR * BACKBONE_MULTIPLIER, WEIGHT_DECAY_NORM),
    "backbone.1.bias": (BASE_LR * BACKBONE_MULTIPLIER, WEIGHT_DECAY_NORM),
    "backbone.2.relative_position_bias_table": (BASE_LR * BACKBONE_MULTIPLIER, 0.0),
    "backbone.2.proj.weight": (BASE_LR * BACKBONE_MULTIPLIER, WEIGHT_DECAY),
    "backbone.2.proj.bias": (BASE_LR * BACKBONE_MULTIPLIER, WEIGHT_DECAY),
    "head.weight": (BASE_LR, WEIGHT_DECAY),
    "head.bias": (BASE_LR, WEIGHT_DECAY),
    "norm.weight": (BASE_LR, WEIGHT_DECAY_NORM),
    "norm.bias": (BASE_LR, WEIGHT_DECAY_NORM),
    "group_norm.weight": (BASE_LR, WEIGHT_DECAY_NORM),
    "group_norm.bias": (BASE_LR, WEIGHT_DECAY_NORM),
    "embed.weight": (BASE_LR, WEIGHT_DECAY_EMBED),
}


def _cfg(optimizer, clip=False, amp=False):
    cfg = load_config("")
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.BACKBONE_MULTIPLIER = BACKBONE_MULTIPLIER
    cfg.SOLVER.WEIGHT_DECAY = WEIGHT_DECAY
    cfg.SOLVER.WEIGHT_DECAY_NORM = WEIGHT_DECAY_NORM
    cfg.SOLVER.WEIGHT_DECAY_EMBED = WEIGHT_DECAY_EMBED
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


def _per_parameter_reference(model, optimizer_name, implementation):
    """Upstream's layout: one group per parameter, hyper-parameters from the table above."""
    params = dict(model.named_parameters())
    groups = [{"params": [params[name]], "lr": lr, "weight_decay": wd} for name, (lr, wd) in EXPECTED.items()]
    if optimizer_name == "SGD":
        return torch.optim.SGD(groups, BASE_LR, momentum=0.9, **implementation)
    return torch.optim.AdamW(groups, BASE_LR, **implementation)


def _train(model, optimizer, clip=None, steps=4):
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _implementation(optimizer):
    return {key: optimizer.defaults[key] for key in ("fused", "foreach") if optimizer.defaults.get(key)}


@pytest.mark.parametrize("optimizer_name", ["SGD", "ADAMW"])
@pytest.mark.parametrize("amp", [False, True])
def test_grouped_updates_equal_per_parameter_updates_bit_for_bit(optimizer_name, amp):
    torch.manual_seed(0)
    model = _TinyModel()
    reference_model = _TinyModel()
    reference_model.load_state_dict(model.state_dict())

    optimizer = build_optimizer(_cfg(optimizer_name, amp=amp), model)
    names = {p: name for name, p in model.named_parameters()}
    hyperparameters = {names[p]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert hyperparameters == EXPECTED
    assert len(optimizer.param_groups) == len(set(EXPECTED.values())) == 5
    # AMP keeps the per-tensor arithmetic (GradScaler must unscale before the clipping).
    assert _implementation(optimizer) == ({"foreach": True} if amp else {"fused": True})

    grouped = _train(model, optimizer)
    reference = _train(reference_model, _per_parameter_reference(reference_model, optimizer_name, _implementation(optimizer)))
    for name in EXPECTED:
        assert torch.equal(grouped[name], reference[name]), name
    assert torch.equal(model.frozen.weight, reference_model.frozen.weight)  # never updated


def test_foreach_updates_equal_single_tensor_updates():
    torch.manual_seed(0)
    model = _TinyModel()
    reference_model = _TinyModel()
    reference_model.load_state_dict(model.state_dict())
    grouped = _train(model, build_optimizer(_cfg("ADAMW", amp=True), model))
    reference = _train(reference_model, _per_parameter_reference(reference_model, "ADAMW", {"foreach": False}))
    for name in EXPECTED:
        assert torch.equal(grouped[name], reference[name]), name


def test_full_model_clipping_clips_all_groups_together():
    torch.manual_seed(0)
    model = _TinyModel()
    reference_model = _TinyModel()
    reference_model.load_state_dict(model.state_dict())
    optimizer = build_optimizer(_cfg("ADAMW", clip=True), model)
    grouped = _train(model, optimizer)
    reference = _train(
        reference_model, _per_parameter_reference(reference_model, "ADAMW", _implementation(optimizer)), clip=0.01
    )
    for name in EXPECTED:
        # The total norm sums the per-tensor norms in group order rather than model order: equal
        # up to float rounding.
        torch.testing.assert_close(grouped[name], reference[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer_name", ["SGD", "ADAMW"])
def test_state_saved_with_one_group_per_parameter_resumes_in_the_grouped_optimizer(optimizer_name):
    """A run started with upstream's layout (one group per parameter, e.g. checkpoints written
    before parameters shared groups) continues with the same moments and learning rates."""
    from mask2former.engine.optimizer import regroup_per_parameter_state

    torch.manual_seed(0)
    model = _TinyModel()
    grouped_model = _TinyModel()
    grouped_model.load_state_dict(model.state_dict())
    cfg = _cfg(optimizer_name)
    implementation = _implementation(build_optimizer(cfg, _TinyModel()))

    # Two steps in the old layout, in the order the old builder made its groups
    # (the module traversal order), then the state is saved; a scheduler changed the lr.
    params = dict(model.named_parameters())
    order = [name for name in dict(model.named_parameters()) if name in EXPECTED]
    old = torch.optim.SGD if optimizer_name == "SGD" else torch.optim.AdamW
    old_groups = [{"params": [params[n]], "lr": EXPECTED[n][0] / 2, "weight_decay": EXPECTED[n][1]} for n in order]
    kwargs = {"momentum": 0.9} if optimizer_name == "SGD" else {}
    old_optimizer = old(old_groups, BASE_LR, **kwargs, **implementation)
    _train(model, old_optimizer, steps=2)
    saved = copy.deepcopy(old_optimizer.state_dict())  # as written to and read from a file
    grouped_model.load_state_dict(model.state_dict())

    grouped = build_optimizer(cfg, grouped_model)
    with pytest.raises(ValueError):  # what --resume met before the upgrade
        grouped.load_state_dict(saved)
    grouped.load_state_dict(regroup_per_parameter_state(saved, grouped, grouped_model))
    assert {g["lr"] for g in grouped.param_groups} == {lr / 2 for lr, _ in EXPECTED.values()}

    continued_old = _train(model, old_optimizer, steps=2)
    continued_grouped = _train(grouped_model, grouped, steps=2)
    for name in EXPECTED:
        assert torch.equal(continued_grouped[name], continued_old[name]), name


def test_state_of_the_same_layout_is_left_alone():
    from mask2former.engine.optimizer import regroup_per_parameter_state

    model = _TinyModel()
    optimizer = build_optimizer(_cfg("ADAMW"), model)
    state = optimizer.state_dict()
    assert regroup_per_parameter_state(state, optimizer, model) is state
