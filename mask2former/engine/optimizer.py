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
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
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
