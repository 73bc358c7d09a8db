"""Checkpoint contract: the model built from each official config has exactly the state_dict of the
official implementation (names, order, shapes, dtypes) and the same number of parameters.

The key lists come from the official code (tests/data/golden/keys, see the golden README)."""
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.projects.deeplab import add_deeplab_config

from mask2former import add_maskformer2_config
from mask2former_video import add_maskformer2_video_config

from golden_keys import KEYS_DIR, read_key_list, state_dict_entries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# key-list file -> config under configs/
CONFIGS = {
    "coco_panoptic_maskformer2_R50_bs16_50ep": "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "coco_panoptic_maskformer2_R101_bs16_50ep": "coco/panoptic-segmentation/maskformer2_R101_bs16_50ep.yaml",
    "coco_panoptic_maskformer2_swin_tiny_bs16_50ep": (
        "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
    ),
    "coco_panoptic_maskformer2_swin_large_IN21k_384_bs16_100ep": (
        "coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml"
    ),
    "coco_instance_maskformer2_R50_bs16_50ep": "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "ade20k_semantic_maskformer2_R50_bs16_160k": "ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
    "ade20k_semantic_maskformer2_swin_large_IN21k_384_bs16_160k_res640": (
        "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml"
    ),
    "cityscapes_semantic_maskformer2_R50_bs16_90k": (
        "cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml"
    ),
    # The file name says maskformer_, but it is a Mask2Former model (as upstream names it).
    "mapillary-vistas_panoptic_maskformer_R50_bs16_300k": (
        "mapillary-vistas/panoptic-segmentation/maskformer_R50_bs16_300k.yaml"
    ),
    "ytvis_2019_video_maskformer2_R50_bs16_8ep": "youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml",
}
# Checked by the tests of the DiNAT, SeMask and ViT-Adapter backbones (test_vit_adapter.py) and of
# the ViT-Adapter checkpoint converter (test_vit_adapter_converters.py).
OTHER_BACKBONES = {
    "dinat_large_ade20k_semantic",
    "dinat_large_coco_panoptic",
    "semask_swin_large_ade20k_semantic",
    "vit_adapter_large_backbone",
    "vit_adapter_large_mmdet_panoptic_head",
}


def test_every_key_list_is_checked():
    files = {f[: -len(".txt")] for f in os.listdir(KEYS_DIR) if f.endswith(".txt")}
    assert files == set(CONFIGS) | OTHER_BACKBONES


# Built on the CPU to show it builds there (SyncBN without a process group included); the
# others are built on the "meta" device, which has the same names, shapes and dtypes but skips
# allocating and initialising up to 215M parameters.
CPU_BUILDS = {"cityscapes_semantic_maskformer2_R50_bs16_90k"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_matches_official(name):
    config_file = os.path.join(REPO, "configs", CONFIGS[name])
    assert os.path.isfile(config_file), f"missing config {config_file}"
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(config_file)
    device = "cpu" if name in CPU_BUILDS else "meta"
    cfg.MODEL.DEVICE = device
    with torch.device(device):
        model = build_model(cfg)

    expected, expected_total = read_key_list(name)
    actual = state_dict_entries(model)

    expected_keys = {e[0] for e in expected}
    actual_keys = {a[0] for a in actual}
    missing = sorted(expected_keys - actual_keys)
    unexpected = sorted(actual_keys - expected_keys)
    assert not missing and not unexpected, (
        f"{name}: {len(missing)} missing keys (first: {missing[:5]}), "
        f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})"
    )
    mismatched = [(e, a) for e, a in zip(expected, actual) if e != a]
    assert not mismatched, f"{name}: first differing entries (expected, actual): {mismatched[:5]}"
    assert sum(p.numel() for p in model.parameters()) == expected_total
    # pixel_mean / pixel_std are non-persistent buffers: not part of a checkpoint.
    assert not any(k.startswith("pixel_") for k in actual_keys)
