#!/usr/bin/env python
"""
Mask2Former training and evaluation script, on Detectron2's DefaultTrainer.

    python train_net.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file <config> --eval-only MODEL.WEIGHTS <checkpoint>

Without GPUs, ``--num-gpus N`` starts N CPU processes that synchronise over GLOO.
"""
import os

# OpenMP threads that busy-wait between operations make CPU training many times slower as soon as
# another process wants the same cores; waiting passively costs little on an idle machine. Read
# when torch loads OpenMP, so it is set before any import of torch (set it yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The compatibility layer must be applied before anything imports detectron2.
import mask2former  # noqa: E402,F401  isort: skip

import copy
import functools
import itertools
import logging
import weakref
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

import detectron2.utils.comm as comm
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_argument_parser,
    default_setup,
)
from detectron2.evaluation import verify_results
from detectron2.projects.deeplab import add_deeplab_config, build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils.logger import setup_logger

from mask2former import add_maskformer2_config
from mask2former.data.custom import register_custom_datasets
from mask2former.data.dataset_mappers import build_train_mapper
from mask2former.evaluation import build_evaluator
from mask2former.test_time_augmentation import SemanticSegmentorWithTTA
from mask2former.utils.checkpoint import Mask2FormerCheckpointer
from mask2former.utils.launch import launch

logger = logging.getLogger("mask2former")

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


class Trainer(DefaultTrainer):
    """DefaultTrainer with Mask2Former's data mappers, evaluators, optimizer and LR schedule."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with two changes: the model is wrapped for distributed training
        # in a way that also works on CPUs (Detectron2 always passes a GPU index), and checkpoints
        # are loaded by Mask2FormerCheckpointer (a complete report of missing, unexpected and
        # mis-shaped keys instead of a silent partial load).
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
        self.checkpointer = Mask2FormerCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # Detectron2 v0.6's DefaultTrainer leaves the optimizer (and AMP grad-scaler) state out of its
    # checkpoints, so --resume restarted AdamW's moments and the learning rate of the first resumed
    # iteration; newer Detectron2 versions save and load it exactly like this.
    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def train(self):
        """Train, then return the results of the last evaluation (Detectron2 returns them only
        when TEST.EXPECTED_RESULTS is set)."""
        super().train()
        # Set by the evaluation hook of DefaultTrainer.build_hooks() after each evaluation.
        return getattr(self, "_last_eval_results", OrderedDict())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

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


# ---------------------------------------------------------------------------------------------
# Set-up and input checks (all done before a model is built or a dataset is loaded)
# ---------------------------------------------------------------------------------------------
def load_config(config_file, opts=()):
    """Build the config from defaults + `config_file` (+ its _BASE_ files) + `opts` overrides."""
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except FileNotFoundError as e:
            # Only a _BASE_ can be missing here: the file itself was checked above.
            raise FileNotFoundError(
                f"Config file {config_file}: its _BASE_ file {e.filename} does not exist"
            ) from e
        except KeyError as e:
            raise KeyError(f"Config file {config_file}: {_key_error_message(e)}") from e
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd number of items: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, AssertionError) as e:
            # yacs reports an unknown key by an AssertionError("Non-existent key: A.B").
            raise KeyError(f"Command-line override {key} {value}: {_key_error_message(e)}") from e
    return cfg


def _key_error_message(error):
    message = error.args[0] if error.args else str(error)
    return f"{message} (not a Detectron2 or Mask2Former config key; check its spelling and nesting)"


def use_cpu_without_cuda(cfg):
    """
    The upstream configs assume GPUs (Detectron2's default MODEL.DEVICE is "cuda", and its
    AMPTrainer needs CUDA); without one, run them on the CPU in float32.
    """
    if torch.cuda.is_available():
        return
    if cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning("CUDA is not available: MODEL.DEVICE %s -> cpu.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED:
        logger.warning("CUDA is not available: SOLVER.AMP.ENABLED is ignored.")
        cfg.SOLVER.AMP.ENABLED = False
    for key in replace_sync_batch_norm(cfg):
        logger.warning("CUDA is not available: %s SyncBN -> naiveSyncBN.", key)


def replace_sync_batch_norm(cfg, prefix=""):
    """
    torch.nn.SyncBatchNorm refuses CPU tensors in multi-process training; Detectron2's
    NaiveSyncBatchNorm computes the same statistics with all-reduces that GLOO supports, and has
    the same state-dict entries, so checkpoints load either way. Returns the keys it changed.
    """
    changed = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            changed += replace_sync_batch_norm(value, prefix=f"{name}.")
        elif key == "NORM" and value == "SyncBN":
            cfg[key] = "naiveSyncBN"
            changed.append(name)
    return changed


def check_inputs(cfg, resume=False):
    """Clear errors for unregistered datasets and missing weight files, before expensive work."""
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        unknown = [name for name in cfg.DATASETS[key] if name not in registered]
        if unknown:
            synthetic = sorted(n for n in registered if n.startswith("synthetic_"))
            raise KeyError(
                f"DATASETS.{key} names dataset(s) that are not registered: {unknown}. "
                f"Built-in datasets are registered by mask2former.data (see datasets/README.md); "
                f"custom ones via DATASETS.CUSTOM (see GETTING_STARTED.md). "
                f"The built-in synthetic datasets are {synthetic}."
            )
    weights = cfg.MODEL.WEIGHTS
    resuming_from_checkpoint = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if weights and "://" not in weights and not resuming_from_checkpoint and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS file does not exist: {weights}. Give the path to a checkpoint "
            "(see MODEL_ZOO.md), or MODEL.WEIGHTS \"\" to start from random initialisation."
        )


def setup(args):
    """Create the config from the command line, check it, and set up logging and the output dir."""
    cfg = load_config(args.config_file, args.opts)
    use_cpu_without_cuda(cfg)
    register_custom_datasets(cfg)
    check_inputs(cfg, resume=args.resume)
    cfg.freeze()
    default_setup(cfg, args)
    # Set up the "mask2former" logger (Detectron2's default_setup only sets up "detectron2" and "fvcore").
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        Mask2FormerCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
