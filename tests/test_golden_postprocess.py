"""Post-processing against the reference implementation's outputs.

* postprocess_synthetic.pth: the reference semantic/panoptic/instance inference on designed
  predictions covering every branch (README 2.5) — must match exactly.
* outputs.pth "processed": the whole tiny model end to end (README 2.4) — needs the full model.
"""
import os

import pytest
import torch
from detectron2.data import MetadataCatalog
from torch import nn

from mask2former.maskformer_model import MaskFormer

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_swin_panoptic")

GOLDEN_METADATA = dict(
    thing_dataset_id_to_contiguous_id={i: i for i in range(4)},
    stuff_dataset_id_to_contiguous_id={i: i for i in range(7)},
    thing_classes=[f"thing{i}" for i in range(4)],
    stuff_classes=[f"thing{i}" for i in range(4)] + [f"stuff{i}" for i in range(4, 7)],
)


def register_golden_metadata():
    for name in ["golden_tiny_panoptic_train", "golden_tiny_panoptic_val"]:
        meta = MetadataCatalog.get(name)
        if not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            meta.set(**GOLDEN_METADATA)
    return MetadataCatalog.get("golden_tiny_panoptic_train")


class _NoHead(nn.Module):
    num_classes = 7


def postprocess_model(object_mask_threshold=0.0, overlap_threshold=0.0):
    """A MaskFormer whose inference functions can be called directly (no backbone needed)."""
    return MaskFormer(
        backbone=nn.Identity(),
        sem_seg_head=_NoHead(),
        criterion=None,
        num_queries=10,
        object_mask_threshold=object_mask_threshold,
        overlap_threshold=overlap_threshold,
        metadata=register_golden_metadata(),
        size_divisibility=32,
        sem_seg_postprocess_before_inference=True,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
        semantic_on=True,
        panoptic_on=True,
        instance_on=True,
        test_topk_per_image=10,
    )


def instance_rows(scores, classes, masks):
    """Instances as comparable rows sorted by (class, score) (the reference order is topk's)."""
    rows = sorted(zip(classes.tolist(), scores.tolist(), range(len(scores))))
    order = [r[2] for r in rows]
    return classes[order], scores[order], masks[order].bool()


@pytest.fixture(scope="module")
def synthetic():
    return torch.load(os.path.join(GOLDEN, "postprocess_synthetic.pth"), weights_only=True)


def test_semantic_inference_synthetic(synthetic):
    model = postprocess_model()
    sem_seg = model.semantic_inference(synthetic["mask_cls"], synthetic["mask_pred"])
    torch.testing.assert_close(sem_seg, synthetic["sem_seg"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", [0, 1])
def test_panoptic_inference_synthetic_exact(synthetic, t):
    ref = synthetic["panoptic"][t]
    model = postprocess_model(ref["object_mask_threshold"], ref["overlap_threshold"])
    panoptic_seg, segments_info = model.panoptic_inference(synthetic["mask_cls"], synthetic["mask_pred"])
    assert panoptic_seg.dtype == torch.int32
    assert torch.equal(panoptic_seg, ref["panoptic_seg"])
    assert segments_info == ref["segments_info"]


def test_instance_inference_synthetic(synthetic):
    ref = synthetic["instances"]
    model = postprocess_model()
    instances = model.instance_inference(synthetic["mask_cls"], synthetic["mask_pred"])
    assert instances.image_size == (64, 80)
    ours = instance_rows(instances.scores, instances.pred_classes, instances.pred_masks)
    theirs = instance_rows(ref["scores"], ref["pred_classes"], ref["pred_masks"])
    assert torch.equal(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-6, atol=0)
    assert torch.equal(ours[2], theirs[2])
    # Same (query, class) pairs in the same order as the reference's CPU topk.
    assert instances.pred_classes.tolist() == ref["pred_classes"].tolist()
    assert instances.pred_masks.dtype == torch.float32


def test_postprocess_shares_sigmoid_without_changing_results(synthetic):
    model = postprocess_model()
    combined = model.postprocess(synthetic["mask_cls"], synthetic["mask_pred"])
    separate_sem = model.semantic_inference(synthetic["mask_cls"], synthetic["mask_pred"])
    separate_pan = model.panoptic_inference(synthetic["mask_cls"], synthetic["mask_pred"])
    assert torch.equal(combined["sem_seg"], separate_sem)
    assert torch.equal(combined["panoptic_seg"][0], separate_pan[0])
    assert combined["panoptic_seg"][1] == separate_pan[1]


# ----------------------------------------------------------------------------------------------
# End to end with the full tiny model.


def build_golden_model():
    """The tiny model of config.yaml with state_dict.pth loaded strictly, or skip if not buildable yet."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from mask2former import add_maskformer2_config

    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(os.path.join(GOLDEN, "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    register_golden_metadata()
    try:
        model = build_model(cfg)
    except KeyError as e:  # a component is not registered (yet)
        pytest.skip(f"full model not buildable: {e}")
    state_dict = torch.load(os.path.join(GOLDEN, "state_dict.pth"), weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.mark.slow
def test_end_to_end_processed_outputs():
    model = build_golden_model().eval()
    inputs = torch.load(os.path.join(GOLDEN, "input.pth"), weights_only=True)
    ref = torch.load(os.path.join(GOLDEN, "outputs.pth"), weights_only=True)["processed"]
    image = inputs["image_hwc_uint8"].permute(2, 0, 1)
    with torch.no_grad():
        (result,) = model([{"image": image, "height": 128, "width": 160}])

    torch.testing.assert_close(result["sem_seg"], ref["sem_seg"], rtol=1e-4, atol=1e-5)
    panoptic_seg, segments_info = result["panoptic_seg"]
    assert segments_info == ref["segments_info"]
    # README 2.8: a few pixels are near-ties between queries (gaps down to 2e-7).
    assert (panoptic_seg != ref["panoptic_seg"]).sum().item() <= 40
    instances = result["instances"]
    assert len(instances) == len(ref["instances"]["scores"]) == 0
    assert instances.image_size == (128, 160)


@pytest.mark.slow
def test_real_model_handles_small_grey_and_odd_sized_images_and_tta():
    """Images smaller than SIZE_DIVISIBILITY (and Swin's window), grey images and odd sizes run
    through the real model and come back at their own size; single-scale TTA equals plain."""
    from detectron2.config import get_cfg

    from mask2former.test_time_augmentation import SemanticSegmentorWithTTA

    model = build_golden_model().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in [(3, 5, 7), (1, 40, 50), (3, 33, 65)]:
            (out,) = model([{"image": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)}])
            assert out["sem_seg"].shape == (7,) + shape[1:]
            assert out["panoptic_seg"][0].shape == shape[1:]
            assert out["instances"].image_size == shape[1:]

        image = torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8)
        (plain,) = model([{"image": image, "height": 64, "width": 96}])
    cfg = get_cfg()
    cfg.TEST.AUG.MIN_SIZES = (64,)
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = False
    (tta,) = SemanticSegmentorWithTTA(cfg, model)([{"image": image, "height": 64, "width": 96}])
    torch.testing.assert_close(tta["sem_seg"], plain["sem_seg"], rtol=0, atol=0)
    assert torch.equal(tta["panoptic_seg"][0], plain["panoptic_seg"][0])
    assert tta["panoptic_seg"][1] == plain["panoptic_seg"][1]
    assert torch.equal(tta["instances"].scores, plain["instances"].scores)
