"""The optimizer of Mask2Former's recipes: per-parameter learning rates and weight decays, and
full-model gradient clipping."""
import copy
import functools
import itertools

import torch

from detectron2.solver.build import maybe_add_gradient_clipping

from .layer_decay import layer_decay_hyperparams

_NORM_MODULE_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    # NaiveSyncBatchNorm inherits from BatchNorm2d
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def build_optimizer(cfg, model):
    """
    SGD or AdamW with one parameter group per parameter, so that each gets its own learning rate
    (backbone x BACKBONE_MULTIPLIER) and weight decay (norms: WEIGHT_DECAY_NORM, embeddings:
    WEIGHT_DECAY_EMBED, Swin's position tables: none), and optional full-model gradient clipping.
    """
    defaults = {"lr": cfg.SOLVER.BASE_LR, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}
    params = []
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
            hyperparams = copy.copy(defaults)
            if "backbone" in module_name:
                hyperparams["lr"] = hyperparams["lr"] * cfg.SOLVER.BACKBONE_MULTIPLIER
            if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
                hyperparams["weight_decay"] = 0.0
            if isinstance(module, _NORM_MODULE_TYPES):
                hyperparams["weight_decay"] = cfg.SOLVER.WEIGHT_DECAY_NORM
            if isinstance(module, torch.nn.Embedding):
                hyperparams["weight_decay"] = cfg.SOLVER.WEIGHT_DECAY_EMBED
            if cfg.SOLVER.LAYER_DECAY.ENABLED:
                hyperparams = layer_decay_hyperparams(cfg, f"{module_name}.{param_name}", value)
            params.append({"params": [value], **hyperparams})

    clip = cfg.SOLVER.CLIP_GRADIENTS
    clip_full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0

    def with_full_model_clipping(optimizer_class):
        if not clip_full_model:
            return optimizer_class
        return _full_model_clipping_optimizer(optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE)

    name = cfg.SOLVER.OPTIMIZER
    if name == "SGD":
        optimizer = with_full_model_clipping(torch.optim.SGD)(
            params, cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM
        )
    elif name == "ADAMW":
        optimizer = with_full_model_clipping(torch.optim.AdamW)(params, cfg.SOLVER.BASE_LR)
    else:
        raise NotImplementedError(f"SOLVER.OPTIMIZER {name!r} is not supported; use 'SGD' or 'ADAMW'.")
    if not clip_full_model:
        # Detectron2's per-parameter clipping ("value" / "norm" clip types).
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer


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
