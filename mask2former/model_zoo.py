"""
Published Mask2Former models by name, in the spirit of ``detectron2.model_zoo``.

A model's name is its config's path under ``configs/`` without ``.yaml`` (the ``.yaml`` suffix
and a leading ``configs/`` are accepted too), e.g.
``coco/panoptic-segmentation/maskformer2_R50_bs16_50ep``. The table lives in ``model_zoo.csv``
next to this file, one row per MODEL_ZOO.md row with a checkpoint link (a test keeps the two in
step)::

    from mask2former import model_zoo
    model = model_zoo.get("coco/panoptic-segmentation/maskformer2_R50_bs16_50ep", device="cpu")

Checkpoint URLs are downloaded once into a cache (see :mod:`mask2former.utils.download`); any
``MODEL.WEIGHTS`` may be such a URL.
"""
import csv
import functools
import os

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_zoo.csv")

__all__ = ["list_models", "get_config_file", "get_checkpoint_url", "get_config", "get"]


@functools.lru_cache(maxsize=None)
def _table():
    with open(TABLE, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return {row["name"]: row for row in rows}


def list_models():
    """Names of every model in the zoo, in MODEL_ZOO.md's order."""
    return list(_table())


def _row(name):
    key = name[len("configs/"):] if name.startswith("configs/") else name
    key = key[: -len(".yaml")] if key.endswith(".yaml") else key
    table = _table()
    if key not in table:
        close = [n for n in table if os.path.basename(n) == os.path.basename(key)]
        hint = f" Models with that file name: {close}." if close else ""
        raise KeyError(
            f"{name!r} is not in the model zoo.{hint} Names are config paths under configs/ without "
            f".yaml, as listed in MODEL_ZOO.md (mask2former.model_zoo.list_models() gives them all)."
        )
    return table[key]


def get_config_file(name):
    """Absolute path of the config that builds model `name`."""
    path = os.path.join(REPO_ROOT, _row(name)["config"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model zoo entry {name!r}: its config {path} does not exist")
    return path


def get_checkpoint_url(name):
    """URL of the published checkpoint of model `name` (what MODEL.WEIGHTS should be)."""
    row = _row(name)
    if row["direct_download"] != "yes":
        raise ValueError(
            f"Model zoo entry {name!r}: its checkpoint is published on a web page ({row['checkpoint']}), "
            "not as a file that can be downloaded automatically. Download it in a browser and set "
            "MODEL.WEIGHTS to the local file."
        )
    return row["checkpoint"]


def get_config(name, trained=True, add_configs=()):
    """
    The config of model `name` (not frozen). With ``trained=True`` its MODEL.WEIGHTS is the
    published checkpoint's URL; with ``trained=False`` it is empty (random initialisation),
    unlike Detectron2's model zoo, which would fetch the ImageNet initialisation.
    `add_configs`: functions adding further keys, e.g. for the YouTube-VIS models
    ``[mask2former_video.add_maskformer2_video_config]`` (this package does not import the video one).
    """
    from .engine import load_config, use_cpu_without_cuda

    cfg = load_config(get_config_file(name), add_configs=add_configs)
    cfg.MODEL.WEIGHTS = get_checkpoint_url(name) if trained else ""
    use_cpu_without_cuda(cfg)
    return cfg


def get(name, trained=True, device=None, add_configs=()):
    """
    Build model `name` in evaluation mode, with its published weights when `trained` (downloaded
    into the cache the first time).

    Args:
        device (str or None): e.g. "cpu" or "cuda:0"; None picks CUDA when available, else the CPU.
        add_configs: as in :func:`get_config`.
    """
    from detectron2.modeling import build_model

    from .utils.checkpoint import Mask2FormerCheckpointer

    cfg = get_config(name, trained, add_configs)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        Mask2FormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()
