"""An exponential moving average (EMA) of the model's weights, kept during training (MODEL_EMA).

It follows the EMA of ViT-Adapter's Mask2Former recipe (MMDetection's ``ExpMomentumEMAHook``):
after every iteration t (0-based) each floating-point entry of the model's state dict (parameters and
BatchNorm statistics) moves towards the live value by

    momentum(t) = (1 - MOMENTUM) * exp(-(t + 1) / WARMUP_ITERS) + MOMENTUM,

so the average follows the weights closely at first and slowly (MOMENTUM, 1e-4) later. The average is
saved in every checkpoint under "model_ema" and restored on resume. Training and evaluation use the
live weights, as the original does: its iteration-based runner never swaps the averaged copy in, and
its test script drops the ``ema_*`` entries of the checkpoint. ``ema_state_dict`` gives the averaged
weights for export or evaluation.
"""
import math

import torch

from detectron2.engine import HookBase, hooks as d2_hooks


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class ModelEMA(HookBase):
    def __init__(self, model, momentum=1e-4, warmup_iters=2000):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"MODEL_EMA.MOMENTUM must be in (0, 1), got {momentum}")
        if warmup_iters <= 0:
            raise ValueError(f"MODEL_EMA.WARMUP_ITERS must be positive, got {warmup_iters}")
        self.model = _unwrap(model)
        self.momentum = momentum
        self.warmup_iters = warmup_iters
        self.average = None

    def momentum_at(self, iteration):
        return (1.0 - self.momentum) * math.exp(-(iteration + 1) / self.warmup_iters) + self.momentum

    def _tracked(self):
        return {k: v for k, v in self.model.state_dict().items() if v.dtype.is_floating_point}

    def before_train(self):
        # A resumed run has its average from the checkpoint already.
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in self._tracked().items()}

    @torch.no_grad()
    def after_step(self):
        weight = self.momentum_at(self.trainer.iter)
        for name, value in self._tracked().items():
            self.average[name].lerp_(value, weight)

    def ema_state_dict(self):
        """The model's state dict with the averaged values in place of the live ones."""
        state = self.model.state_dict()
        if self.average is not None:
            state.update(self.average)
        return state

    # Checkpointable interface (Detectron2's Checkpointer saves and loads it under "model_ema").
    def state_dict(self):
        return {} if self.average is None else {k: v.clone() for k, v in self.average.items()}

    def load_state_dict(self, state):
        tracked = self._tracked()
        missing = sorted(set(tracked) - set(state))
        unexpected = sorted(set(state) - set(tracked))
        if missing or unexpected:
            raise KeyError(
                f"The checkpoint's model_ema does not match the model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]} (first 5 of each)"
            )
        self.average = {k: state[k].to(tracked[k]).clone() for k in tracked}


def add_ema_hook(cfg, trainer, hooks):
    """`hooks` with a ModelEMA before the evaluation and checkpoint hooks when MODEL_EMA.ENABLED, and
    the average registered with the trainer's checkpointer."""
    if not cfg.MODEL_EMA.ENABLED:
        return hooks
    ema = ModelEMA(trainer._trainer.model, cfg.MODEL_EMA.MOMENTUM, cfg.MODEL_EMA.WARMUP_ITERS)
    trainer.checkpointer.add_checkpointable("model_ema", ema)
    trainer.model_ema = ema
    hooks = list(hooks)
    # After the timer and LR hooks, before anything that saves or evaluates the model.
    position = next(
        (i for i, h in enumerate(hooks) if isinstance(h, (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook))),
        len(hooks),
    )
    return hooks[:position] + [ema] + hooks[position:]
