"""Test-time augmentation with a model whose outputs the test controls."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import DatasetMapperTTA
from torch import nn

from mask2former.maskformer_model import MaskFormer
from mask2former.test_time_augmentation import SemanticSegmentorWithTTA, align_queries


class Meta:
    name = "fake"
    thing_dataset_id_to_contiguous_id = {0: 0, 1: 1}


class PassBackbone(nn.Module):
    size_divisibility = 32

    def forward(self, x):
        return {"res2": x}


class EquivariantHead(nn.Module):
    """Per-pixel masks (4x4 average pooling + 1x1 conv) and classes from the image mean: flipping
    the image flips the masks and keeps the classes. With ``swap_on_flip`` the query order is
    reversed when the image's left half is brighter than its right half, as a position-sensitive
    query assignment could do."""

    num_classes = 4

    def __init__(self, swap_on_flip=False, num_queries=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mask_weight = nn.Parameter(torch.randn(num_queries, 3, generator=g) * 2)
        self.class_weight = nn.Parameter(torch.randn(num_queries, self.num_classes + 1, 3, generator=g) * 3)
        self.swap_on_flip = swap_on_flip

    def forward(self, features):
        x = features["res2"]
        masks = torch.einsum("qc,nchw->nqhw", self.mask_weight, F.avg_pool2d(x, 4))
        logits = torch.einsum("qkc,nc->nqk", self.class_weight, x.mean((2, 3)))
        if self.swap_on_flip:
            half = x.shape[-1] // 2
            left_brighter = x[..., :half].mean() > x[..., half:].mean()
            if left_brighter:
                masks, logits = masks.flip(1), logits.flip(1)
        return {"pred_logits": logits, "pred_masks": masks}


def make_model(swap_on_flip=False, semantic_on=True, before_inference=True):
    return MaskFormer(
        backbone=PassBackbone(),
        sem_seg_head=EquivariantHead(swap_on_flip),
        criterion=None,
        num_queries=6,
        object_mask_threshold=0.0,
        overlap_threshold=0.0,
        metadata=Meta(),
        size_divisibility=32,
        sem_seg_postprocess_before_inference=before_inference,
        pixel_mean=[100.0, 110.0, 120.0],
        pixel_std=[50.0, 60.0, 70.0],
        semantic_on=semantic_on,
        panoptic_on=True,
        instance_on=True,
        test_topk_per_image=8,
    ).eval()


def tta_cfg(min_sizes, flip, min_size_test=64):
    cfg = get_cfg()
    cfg.TEST.AUG.MIN_SIZES = min_sizes
    cfg.TEST.AUG.MAX_SIZE = 4000
    cfg.TEST.AUG.FLIP = flip
    cfg.INPUT.MIN_SIZE_TEST = min_size_test
    cfg.INPUT.FORMAT = "RGB"
    return cfg


def asymmetric_image(h=64, w=96):
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    image[:, :, : w // 3] //= 3  # darker left part: not flip-symmetric
    return image


def assert_same_outputs(a, b, sem_atol=1e-5):
    torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=0, atol=sem_atol)
    assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    ia, ib = a["instances"], b["instances"]
    oa, ob = ia.scores.argsort(), ib.scores.argsort()
    assert ia.pred_classes[oa].tolist() == ib.pred_classes[ob].tolist()
    torch.testing.assert_close(ia.scores[oa], ib.scores[ob], rtol=1e-4, atol=1e-5)
    assert torch.equal(ia.pred_masks[oa], ib.pred_masks[ob])


@pytest.mark.parametrize("swap_on_flip", [False, True])
def test_flip_tta_of_an_equivariant_model_equals_plain_inference(swap_on_flip):
    """Flipped predictions brought back to the original frame coincide with the plain ones, so the
    merge must reproduce plain inference; with ``swap_on_flip`` only if queries are re-aligned."""
    model = make_model(swap_on_flip)
    image = asymmetric_image()
    with torch.no_grad():
        (plain,) = model([{"image": image, "height": 64, "width": 96}])
    tta = SemanticSegmentorWithTTA(tta_cfg([64], flip=True), model)
    (merged,) = tta([{"image": image, "height": 64, "width": 96}])
    assert_same_outputs(merged, plain)


def test_query_order_matters_for_the_merge():
    """Control for the test above: merging without re-alignment gives a different result."""
    model = make_model(swap_on_flip=True)
    image = asymmetric_image()
    (plain,) = model([{"image": image, "height": 64, "width": 96}])
    tta = SemanticSegmentorWithTTA(tta_cfg([64], flip=True), model)
    inputs = tta.tta_mapper({"image": image, "height": 64, "width": 96})
    for x in inputs:
        x.pop("transforms")
    predictions = tta._predict(inputs)
    cls_a, mask_a, _ = predictions[0]
    cls_b, mask_b, _ = predictions[1]
    mask_b = mask_b.flip(-1)
    naive_cls = ((cls_a.softmax(-1) + cls_b.softmax(-1)) / 2).log()
    naive_mask = torch.logit((mask_a.sigmoid() + mask_b.sigmoid()) / 2, eps=1e-7)
    naive_pan = model.panoptic_inference(naive_cls, naive_mask)
    assert naive_pan[1] != plain["panoptic_seg"][1] or not torch.equal(naive_pan[0], plain["panoptic_seg"][0])


@pytest.mark.parametrize("before_inference", [True, False])
def test_semantic_tta_is_the_average_of_the_augmented_outputs(before_inference):
    """Reference behaviour: sem_seg = mean over copies of the model's own sem_seg, flipped back."""
    model = make_model(semantic_on=True, before_inference=before_inference)
    if not before_inference:
        model.panoptic_on = model.instance_on = False
    cfg = tta_cfg([48, 64, 80], flip=True)
    image = asymmetric_image()
    (merged,) = SemanticSegmentorWithTTA(cfg, model, batch_size=2)([{"image": image, "height": 64, "width": 96}])

    expected = []
    for x in DatasetMapperTTA(cfg)({"image": image, "height": 64, "width": 96}):
        flipped = any(type(t).__name__ == "HFlipTransform" for t in x.pop("transforms").transforms)
        with torch.no_grad():
            sem = model([x])[0]["sem_seg"]
        expected.append(sem.flip(-1) if flipped else sem)
    assert len(expected) == 6
    torch.testing.assert_close(merged["sem_seg"], sum(expected) / 6, rtol=1e-5, atol=1e-6)
    assert merged["sem_seg"].shape == (4, 64, 96)


def test_multi_scale_panoptic_and_instances_have_the_original_size():
    model = make_model()
    image = asymmetric_image()
    tta = SemanticSegmentorWithTTA(tta_cfg([48, 96], flip=True), model)
    (merged,) = tta([{"image": image, "height": 32, "width": 48}])
    assert merged["panoptic_seg"][0].shape == (32, 48)
    assert merged["instances"].image_size == (32, 48)
    assert merged["instances"].pred_boxes.tensor.shape[0] == len(merged["instances"])


def test_align_queries_recovers_a_permutation_and_merge_averages():
    g = torch.Generator().manual_seed(0)
    class_prob = torch.softmax(torch.randn(5, 4, generator=g) * 3, -1)
    mask_prob = torch.sigmoid(torch.randn(5, 80, 90, generator=g) * 4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled_cls = torch.empty_like(class_prob)
    shuffled_mask = torch.empty_like(mask_prob)
    shuffled_cls[perm] = class_prob
    shuffled_mask[perm] = mask_prob
    assert torch.equal(align_queries(class_prob, mask_prob, shuffled_cls, shuffled_mask), perm)

    other_mask = (mask_prob * 0.5).clamp(1e-4, 1 - 1e-4)
    predictions = [
        (class_prob.log(), torch.logit(mask_prob), None),
        (shuffled_cls.log(), torch.logit(torch.empty_like(other_mask).index_copy_(0, perm, other_mask)), None),
    ]
    merged_cls, merged_mask = SemanticSegmentorWithTTA._merge_queries(predictions, reference=0)
    torch.testing.assert_close(merged_cls.softmax(-1), class_prob, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged_mask.sigmoid(), (mask_prob + other_mask) / 2, rtol=1e-4, atol=1e-5)


def test_reads_the_image_file_when_not_given(tmp_path):
    from PIL import Image

    image = asymmetric_image(32, 32)
    path = str(tmp_path / "x.png")
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    model = make_model()
    (from_file,) = SemanticSegmentorWithTTA(tta_cfg([32], flip=False), model)([{"file_name": path}])
    (plain,) = model([{"image": image}])
    assert_same_outputs(from_file, plain, sem_atol=0)


def _tta_config(min_size_test, **aug):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = min_size_test
    for key, value in aug.items():
        cfg.TEST.AUG[key] = value
    return cfg


def _copy_sizes(cfg, height, width):
    """(h, w) of every augmented copy SemanticSegmentorWithTTA would run the model on."""
    tta = SemanticSegmentorWithTTA(cfg, MaskFormerStub())
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    return sorted({tuple(x["image"].shape[-2:]) for x in tta.tta_mapper({"image": image, "height": height, "width": width})})


class MaskFormerStub(nn.Module):
    """Only the mapper is used; the wrapper needs a module."""


def test_default_tta_sizes_follow_a_small_test_size():
    # Detectron2's defaults are 400..1200 (step 100) with a 4000 cap, for a test size of 800. At test
    # size 128 the same ratios 0.5..1.5 (step 0.125) give short sides 64, 80, ..., 192 and a cap of
    # 640: a 96x128 image becomes 64x85 ... 192x256 (long side = short * 128 / 96).
    expected = [(s, int(s * 128 / 96 + 0.5)) for s in range(64, 193, 16)]
    assert _copy_sizes(_tta_config(128), 96, 128) == expected


def test_tta_sizes_a_config_sets_are_kept():
    cfg = _tta_config(128, MIN_SIZES=(100, 200), MAX_SIZE=1000)
    assert _copy_sizes(cfg, 100, 100) == [(100, 100), (200, 200)]
    # Test size 800 is what the defaults were meant for: unchanged (short sides 400..1200).
    assert [h for h, _ in _copy_sizes(_tta_config(800), 96, 96)] == list(range(400, 1201, 100))
