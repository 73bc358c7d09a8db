"""Every YAML under configs/ loads, names registered datasets, and builds its model (no weights).

Models are built on the meta device (shapes only, no memory, no initialisation cost), so even the
Swin-L configs take a fraction of a second; the checkpoint-key tests build real ones.
"""
import glob
import os

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from mask2former_video import add_maskformer2_video_config
from train_net import load_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ROOT = os.path.join(REPO_ROOT, "configs")
ALL_CONFIGS = sorted(
    os.path.relpath(path, CONFIG_ROOT) for path in glob.glob(os.path.join(CONFIG_ROOT, "**", "*.yaml"), recursive=True)
)
# Base-*.yaml files hold the dataset/solver half of a config; they do not describe a Mask2Former model.
# The SeMask "R50" files are, as upstream, only the shared head settings of the SeMask-Swin configs
# built on them: SeMaskMaskFormer needs the semantic maps of a SeMask backbone.
BASE_ONLY = {
    "ade20k/semantic-segmentation/semask_swin/semask_maskformer2_R50_bs16_160k.yaml",
    "cityscapes/semantic-segmentation/semask_swin/semask_maskformer2_R50_bs16_90k.yaml",
}
MODEL_CONFIGS = [
    name for name in ALL_CONFIGS if not os.path.basename(name).startswith("Base-") and name not in BASE_ONLY
]


def _is_video_config(config_name):
    return config_name.startswith("youtubevis")


def _load(config_name):
    # Video configs use the keys of add_maskformer2_video_config, as train_net_video.py loads them.
    add_configs = (add_maskformer2_video_config,) if _is_video_config(config_name) else ()
    return load_config(os.path.join(CONFIG_ROOT, config_name), add_configs=add_configs)


def test_every_upstream_config_is_present():
    # The upstream model zoo's configs (facebookresearch/Mask2Former, image and video tasks).
    expected = {
        "coco/panoptic-segmentation": ["maskformer2_R50_bs16_50ep", "maskformer2_R101_bs16_50ep"]
        + [f"swin/maskformer2_swin_{s}" for s in (
            "tiny_bs16_50ep", "small_bs16_50ep", "base_384_bs16_50ep", "base_IN21k_384_bs16_50ep",
            "large_IN21k_384_bs16_100ep")],
        "coco/instance-segmentation": ["maskformer2_R50_bs16_50ep", "maskformer2_R101_bs16_50ep"]
        + [f"swin/maskformer2_swin_{s}" for s in (
            "tiny_bs16_50ep", "small_bs16_50ep", "base_384_bs16_50ep", "base_IN21k_384_bs16_50ep",
            "large_IN21k_384_bs16_100ep")],
        "ade20k/semantic-segmentation": ["maskformer2_R50_bs16_160k", "maskformer2_R101_bs16_90k"]
        + [f"swin/maskformer2_swin_{s}" for s in (
            "tiny_bs16_160k", "small_bs16_160k", "base_384_bs16_160k_res640",
            "base_IN21k_384_bs16_160k_res640", "large_IN21k_384_bs16_160k_res640")],
        "ade20k/panoptic-segmentation": ["maskformer2_R50_bs16_160k", "swin/maskformer2_swin_large_IN21k_384_bs16_160k"],
        "ade20k/instance-segmentation": ["maskformer2_R50_bs16_160k", "swin/maskformer2_swin_large_IN21k_384_bs16_160k"],
        "mapillary-vistas/panoptic-segmentation": ["maskformer_R50_bs16_300k", "swin/maskformer2_swin_large_IN21k_384_bs16_300k"],
        "mapillary-vistas/semantic-segmentation": ["maskformer2_R50_bs16_300k", "swin/maskformer2_swin_large_IN21k_384_bs16_300k"],
    }
    for task in ("semantic", "instance", "panoptic"):
        expected[f"cityscapes/{task}-segmentation"] = ["maskformer2_R50_bs16_90k", "maskformer2_R101_bs16_90k"] + [
            f"swin/maskformer2_swin_{s}_bs16_90k" for s in ("tiny", "small", "base_IN21k_384", "large_IN21k_384")
        ]
    for year in (2019, 2021):
        expected[f"youtubevis_{year}"] = [
            "Base-YouTubeVIS-VideoInstanceSegmentation",
            "video_maskformer2_R50_bs16_8ep",
            "video_maskformer2_R101_bs16_8ep",
        ] + [
            f"swin/video_maskformer2_swin_{s}_bs16_8ep" for s in ("tiny", "small", "base_IN21k_384", "large_IN21k_384")
        ]
    missing = [
        f"{folder}/{name}.yaml"
        for folder, names in expected.items()
        for name in names
        if f"{folder}/{name}.yaml" not in ALL_CONFIGS
    ]
    assert not missing


@pytest.mark.parametrize("config_name", ALL_CONFIGS)
def test_config_loads_and_names_registered_datasets(config_name):
    cfg = _load(config_name)
    registered = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        assert name in registered, f"{config_name}: dataset {name!r} is not registered"


INSTANCE_MAPPERS = ("mask_former_instance", "coco_instance_lsj")


def _linspace_on_cpu(original):
    # Swin reads its drop-path rates out of a linspace tensor (.item()), which a meta tensor
    # cannot do; they are a handful of numbers, so compute them on the CPU.
    def linspace(*args, **kwargs):
        kwargs.setdefault("device", "cpu")
        return original(*args, **kwargs)

    return linspace


@pytest.mark.parametrize("config_name", MODEL_CONFIGS)
def test_config_builds_its_model(config_name, monkeypatch):
    cfg = _load(config_name)
    cfg.MODEL.DEVICE = "meta"  # build_model() moves the model to MODEL.DEVICE
    monkeypatch.setattr(torch, "linspace", _linspace_on_cpu(torch.linspace))
    with torch.device("meta"):
        model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert sum(p.numel() for p in model.parameters()) > 0

    # The classifier must predict exactly the classes of the training set (+ "no object"): a
    # mismatch trains silently but evaluates nonsense.
    # Instance training sets have "thing" classes only; semantic/panoptic ones have all classes.
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    if cfg.INPUT.DATASET_MAPPER_NAME in INSTANCE_MAPPERS or _is_video_config(config_name):
        expected_classes = len(metadata.thing_classes)
    else:
        expected_classes = len(metadata.stuff_classes)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == expected_classes
    class_embed = model.sem_seg_head.predictor.class_embed
    assert class_embed.out_features == expected_classes + 1
