"""The optimizer of Mask2Former's recipes: per-parameter learning rates and weight decays, and
full-model gradient clipping."""
import functools
import itertools

import torch

from detectron2.solver.build import maybe_add_gradient_clipping

from .layer_decay import layer_decay_hyperparams

# Layers whose parameters take SOLVER.WEIGHT_DECAY_NORM: every batch, group, instance, layer and
# local-response normalisation of torch.nn. The batch-norm base class also covers SyncBatchNorm and
# Detectron2's NaiveSyncBatchNorm (a BatchNorm2d subclass).
_NORMALIZATION_LAYERS = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def parameter_hyperparameters(cfg, module_name, module, param_name):
    """Learning rate and weight decay of one parameter (``param_name`` of ``module``, which is
    ``module_name`` in the model): backbone parameters train at BACKBONE_MULTIPLIER times the base
    rate; normalisation layers, embeddings and Swin's position tables have their own decays."""
    lr = cfg.SOLVER.BASE_LR
    weight_decay = cfg.SOLVER.WEIGHT_DECAY
    if "backbone" in module_name:
        lr = lr * cfg.SOLVER.BACKBONE_MULTIPLIER
    if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
        weight_decay = 0.0
    if isinstance(module, _NORMALIZATION_LAYERS):
        weight_decay = cfg.SOLVER.WEIGHT_DECAY_NORM
    if isinstance(module, torch.nn.Embedding):
        weight_decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
    return {"lr": lr, "weight_decay": weight_decay}


def build_optimizer(cfg, model):
    """
    SGD or AdamW with per-parameter learning rates and weight decays (see
    :func:`parameter_hyperparameters`) and optional full-model gradient clipping.

    Upstream gives every parameter a group of its own. Parameters whose hyper-parameters are equal
    share one group here, in the order they first appear: each parameter's update is the same (the
    updates are element-wise), but the optimizer can update a whole group with one multi-tensor
    (fused) kernel instead of a dozen small operations per parameter.
    """
    groups = {}
    for module_name, module, param_name, value in _trainable_parameters(model):
        hyperparams = parameter_hyperparameters(cfg, module_name, module, param_name)
        if cfg.SOLVER.LAYER_DECAY.ENABLED:
            hyperparams = layer_decay_hyperparams(cfg, f"{module_name}.{param_name}", value)
        groups.setdefault(tuple(sorted(hyperparams.items())), []).append(value)
    params = [{"params": values, **dict(key)} for key, values in groups.items()]
    implementation = _multi_tensor_implementation(
        [value for group in params for value in group["params"]], amp=cfg.SOLVER.AMP.ENABLED
    )

    clip = cfg.SOLVER.CLIP_GRADIENTS
    clip_full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0

    def with_full_model_clipping(optimizer_class):
        if not clip_full_model:
            return optimizer_class
        return _full_model_clipping_optimizer(optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE)

    name = cfg.SOLVER.OPTIMIZER
    if name == "SGD":
        optimizer = with_full_model_clipping(torch.optim.SGD)(
            params, cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, **implementation
        )
    elif name == "ADAMW":
        optimizer = with_full_model_clipping(torch.optim.AdamW)(params, cfg.SOLVER.BASE_LR, **implementation)
    else:
        raise NotImplementedError(f"SOLVER.OPTIMIZER {name!r} is not supported; use 'SGD' or 'ADAMW'.")
    if not clip_full_model:
        # Detectron2's per-parameter clipping ("value" / "norm" clip types).
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer


def _trainable_parameters(model):
    """(module name, module, parameter name, parameter) of each trainable parameter, once each, in
    the order in which the optimizer builders of this project (and upstream's) meet them."""
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if value.requires_grad and value not in seen:
                seen.add(value)
                yield module_name, module, param_name, value


def regroup_per_parameter_state(state, optimizer, model):
    """
    `state` (an optimizer state dict) in the layout of `optimizer`, built by :func:`build_optimizer`
    for `model`, when `state` was saved with one group per parameter (upstream's layout, and this
    project's before parameters shared groups); any other state is returned as it is. Lets
    ``--resume`` continue a run started with one group per parameter, moments and learning rates
    included.
    """
    old_groups = state["param_groups"]
    if len(old_groups) == len(optimizer.param_groups) or any(len(g["params"]) != 1 for g in old_groups):
        return state
    order = [value for *_, value in _trainable_parameters(model)]
    if len(order) != len(old_groups):
        return state  # not the same model: torch's own error says so
    old_index = {id(value): group["params"][0] for value, group in zip(order, old_groups)}
    old_group = {group["params"][0]: group for group in old_groups}
    new_state, new_groups, index = {}, [], 0
    for group in optimizer.param_groups:
        indices = []
        for value in group["params"]:
            old = old_index[id(value)]
            if old in state["state"]:
                new_state[index] = state["state"][old]
            indices.append(index)
            index += 1
        # The members of a group had equal hyper-parameters, so the first one's saved group holds
        # the group's (scheduled) learning rate.
        saved = old_group[old_index[id(group["params"][0])]]
        new_groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": indices})
    return {"state": new_state, "param_groups": new_groups}


def _multi_tensor_implementation(params, amp):
    """How SGD/AdamW update a group: PyTorch's fused kernels (one pass over each tensor, several
    times faster than the per-tensor loop on CPU) when every parameter is a float32/float64 CPU or
    CUDA tensor; otherwise the multi-tensor ("foreach") loop, whose updates equal the per-tensor
    loop's bit for bit. Not fused under AMP: GradScaler would then leave the gradients scaled
    until inside the fused kernel, after the gradient clipping of our step()."""
    fusable = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
    return {"fused": True} if fusable and not amp else {"foreach": True}


@functools.lru_cache(maxsize=None)
def _full_model_clipping_optimizer(optimizer_class, max_norm, norm_type):
    """`optimizer_class` whose step() first clips the norm of ALL gradients taken together."""

    class FullModelGradientClippingOptimizer(optimizer_class):
        def step(self, closure=None):
            all_params = itertools.chain(*[group["params"] for group in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = optimizer_class.__name__ + "WithFullModelGradientClipping"
    return FullModelGradientClippingOptimizer
