"""Building and checking a config from the command line, before any expensive work."""
import logging
import os

import torch

import detectron2.utils.comm as comm
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.utils.logger import setup_logger

from ..config import add_maskformer2_config
from ..data.custom import register_custom_datasets
from ..data.validation import check_num_classes

logger = logging.getLogger("mask2former")


def load_config(config_file, opts=(), add_configs=()):
    """Build the config from defaults + `config_file` (+ its _BASE_ files) + `opts` overrides.

    `add_configs`: further functions adding default keys (e.g. add_maskformer2_video_config).
    """
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    for add_config in add_configs:
        add_config(cfg)
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
    """
    Clear errors for unregistered datasets, too few classes for a dataset's labels and missing
    weight files, before expensive work.
    """
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
    check_num_classes(cfg)
    weights = cfg.MODEL.WEIGHTS
    resuming_from_checkpoint = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if weights and "://" not in weights and not resuming_from_checkpoint and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS file does not exist: {weights}. Give the path to a checkpoint "
            "(see MODEL_ZOO.md), or MODEL.WEIGHTS \"\" to start from random initialisation."
        )


def setup_for_inference(config_file, opts=()):
    """
    The frozen config of a model to predict with (demos, tools), built and checked as train_net's:
    on the CPU when there is no GPU, and with the datasets of DATASETS.CUSTOM registered (their
    metadata gives class names and colours; the files are not checked, no training reads them).
    """
    cfg = load_config(config_file, opts)
    use_cpu_without_cuda(cfg)
    register_custom_datasets(cfg, validate=False)
    check_inputs(cfg)
    cfg.freeze()
    return cfg


def setup(args, add_configs=()):
    """Create the config from the command line, check it, and set up logging and the output dir."""
    cfg = load_config(args.config_file, args.opts, add_configs)
    use_cpu_without_cuda(cfg)
    # Reading the custom datasets' annotations is enough to check names, class counts and weights
    # before the output folder exists; checking every file (minutes on a large set, skipped when
    # the set is unchanged since it last passed) waits until log.txt records it.
    register_custom_datasets(cfg, validate=False)
    check_inputs(cfg, resume=args.resume)
    cfg.freeze()
    default_setup(cfg, args)
    # Set up the "mask2former" logger (Detectron2's default_setup only sets up "detectron2" and "fvcore").
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    register_custom_datasets(cfg)
    return cfg
