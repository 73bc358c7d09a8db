"""Detectron2's DefaultTrainer with Mask2Former's data mappers, evaluators, optimizer and LR schedule."""
import logging
import os
import weakref
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

import detectron2.utils.comm as comm
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..data.dataset_mappers import build_train_mapper
from ..data.train_loader import ResumableTrainLoader, build_resumable_train_loader, restore_rng_states, rng_states
from ..evaluation import build_evaluator
from ..test_time_augmentation import SemanticSegmentorWithTTA
from ..utils.checkpoint import Mask2FormerCheckpointer
from .ema import add_ema_hook
from .optimizer import build_optimizer, regroup_per_parameter_state

logger = logging.getLogger("mask2former")


class Trainer(DefaultTrainer):
    """DefaultTrainer with Mask2Former's data mappers, evaluators, optimizer and LR schedule."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with two changes: the model is wrapped for distributed training
        # in a way that also works on CPUs (Detectron2 always passes a GPU index), and checkpoints
        # are loaded by Mask2FormerCheckpointer (a complete report of missing, unexpected and
        # mis-shaped keys instead of a silent partial load; written atomically).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _distributed_model(model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        _stop_on_non_finite_losses(self._trainer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Fine-tuning on other classes re-initialises what depends on their number.
        self.checkpointer = Mask2FormerCheckpointer.from_config(
            cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # What a checkpoint holds so that --resume continues exactly as if never interrupted:
    # * the optimizer (and AMP grad-scaler) state, which Detectron2 v0.6 leaves out (newer
    #   versions save it the same way): without it AdamW's moments restart;
    # * the data stream's position (ResumableTrainLoader), instead of a sampler restarting from
    #   its seed;
    # * the global random generators (point sampling of the losses, dropout, ...).
    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        state["rng"] = rng_states()
        if isinstance(self.data_loader, ResumableTrainLoader):
            state["data"] = self.data_loader.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            trainer_state = dict(state_dict["_trainer"])
            if "optimizer" in trainer_state:
                model = self._trainer.model
                model = model.module if isinstance(model, DistributedDataParallel) else model
                trainer_state["optimizer"] = regroup_per_parameter_state(
                    trainer_state["optimizer"], self._trainer.optimizer, model
                )
            self._trainer.load_state_dict(trainer_state)
        if "data" in state_dict and isinstance(self.data_loader, ResumableTrainLoader):
            self.data_loader.load_state_dict(state_dict["data"])
        if "rng" in state_dict:
            if comm.get_rank() == 0:
                restore_rng_states(state_dict["rng"])
            else:
                # Only the main process's generators are saved; the others get their own seeds,
                # a function of the iteration, so that their randomness differs from rank 0's.
                seed_all_rng(_rank_seed(state_dict["iteration"], comm.get_rank()))

    def train(self):
        """Train, then return the results of the last evaluation (Detectron2 returns them only
        when TEST.EXPECTED_RESULTS is set)."""
        super().train()
        # Set by the evaluation hook of DefaultTrainer.build_hooks() after each evaluation.
        return getattr(self, "_last_eval_results", OrderedDict())

    def build_hooks(self):
        return add_ema_hook(self.cfg, self, super().build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg, build_train_mapper(cfg))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # Evaluation during training (EvalHook) must not move the training's random generators
        # (building a test loader draws from torch's), or a run resumed after an evaluation would
        # diverge from the uninterrupted one.
        saved = rng_states()
        try:
            return super().test(cfg, model, evaluators)
        finally:
            restore_rng_states(saved)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # Detectron2's DeepLab project adds WarmupPolyLR to the built-in schedules.
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        logger.info("Running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})


def build_train_loader(cfg, mapper):
    """The training loader: resumable to the exact batch (ResumableTrainLoader) with the default
    sampler, Detectron2's for the others (whose position is not saved)."""
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
        return build_resumable_train_loader(cfg, mapper, dataset)
    logger.warning(
        f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN}: --resume will not continue the data "
        "stream where it stopped (only TrainingSampler's position is saved)."
    )
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)


def _rank_seed(iteration, rank):
    return (iteration * 1000003 + rank) % 2**31


def _distributed_model(model):
    """`model` wrapped in DistributedDataParallel when several processes train together."""
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def _stop_on_non_finite_losses(trainer):
    """
    Make `trainer` stop with an error naming the iteration and the loss terms that are NaN/inf.

    Detectron2 only checks the sum of the losses gathered on the main process, and its message
    does not say which term broke. This check runs in every process, on the local loss terms,
    before the optimizer step, so the weights are never updated with a non-finite gradient.
    """
    write_metrics = trainer._write_metrics

    def check_then_write_metrics(loss_dict, *args, **kwargs):
        bad_terms = {
            name: float(value.detach().float().cpu().reshape(-1)[0])
            for name, value in loss_dict.items()
            if not bool(torch.isfinite(value.detach()).all())
        }
        if bad_terms:
            terms = ", ".join(f"{name}={value}" for name, value in sorted(bad_terms.items()))
            raise FloatingPointError(
                f"Non-finite loss at iteration {trainer.iter}: {terms} "
                f"(other terms: {sorted(set(loss_dict) - set(bad_terms))}). "
                "Try a lower SOLVER.BASE_LR, gradient clipping (SOLVER.CLIP_GRADIENTS), or check the "
                "annotations of the images in this batch."
            )
        return write_metrics(loss_dict, *args, **kwargs)

    trainer._write_metrics = check_then_write_metrics
