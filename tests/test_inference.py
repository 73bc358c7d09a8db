"""MaskFormer meta-architecture: inference edge cases (naive references), input handling, training.

Uses a fake backbone/head whose outputs the test controls; the real tiny model is covered by
tests/test_golden_postprocess.py.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances
from torch import nn

from mask2former.maskformer_model import MaskFormer, masks_to_boxes, resize_to_output
from mask2former.modeling.postprocessing import instance_inference
from mask2former.modeling.criterion import SetCriterion
from mask2former.modeling.matcher import HungarianMatcher


class Meta:
    name = "fake"
    thing_dataset_id_to_contiguous_id = {10: 0, 11: 1}  # classes 0, 1 are things, 2, 3 stuff


class RecordingBackbone(nn.Module):
    size_divisibility = 32

    def forward(self, x):
        self.last_input = x
        return {"res2": x}


class ImageHead(nn.Module):
    """Masks at stride 4 from the image (1x1 conv of 4x4-average-pooled pixels), classes from the
    image mean: every output is a function of the input the test can predict."""

    num_classes = 4

    def __init__(self, num_queries=5, in_channels=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mask_weight = nn.Parameter(torch.randn(num_queries, in_channels, generator=g))
        self.class_weight = nn.Parameter(torch.randn(num_queries, self.num_classes + 1, in_channels, generator=g))

    def forward(self, features):
        x = features["res2"]
        pooled = F.avg_pool2d(x, 4)
        masks = torch.einsum("qc,nchw->nqhw", self.mask_weight, pooled)
        logits = torch.einsum("qkc,nc->nqk", self.class_weight, x.mean((2, 3)))
        aux = [{"pred_logits": logits * 0.5, "pred_masks": masks * 0.5}]
        return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": aux}


def make_model(semantic_on=True, panoptic_on=True, instance_on=True, topk=6, object_mask_threshold=0.0,
               overlap_threshold=0.0, before_inference=True, num_channels=3):
    head = ImageHead(in_channels=num_channels)
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=32)
    weight_dict = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    weight_dict.update({k + "_0": v for k, v in weight_dict.items()})
    criterion = SetCriterion(4, matcher, weight_dict, 0.1, ["labels", "masks"], 32, 3.0, 0.75)
    return MaskFormer(
        backbone=RecordingBackbone(),
        sem_seg_head=head,
        criterion=criterion,
        num_queries=5,
        object_mask_threshold=object_mask_threshold,
        overlap_threshold=overlap_threshold,
        metadata=Meta(),
        size_divisibility=32,
        sem_seg_postprocess_before_inference=before_inference,
        pixel_mean=[100.0, 110.0, 120.0][:num_channels],
        pixel_std=[50.0, 60.0, 70.0][:num_channels],
        semantic_on=semantic_on,
        panoptic_on=panoptic_on,
        instance_on=instance_on,
        test_topk_per_image=topk,
    ).eval()


# ----------------------------------------------------------------------------------------------
# naive references


def naive_panoptic(mask_cls, mask_pred, num_classes, thing_classes, object_thr, overlap_thr):
    """Pixel-by-pixel statement of the panoptic rule, written independently of the model's code."""
    prob = torch.softmax(mask_cls.double(), -1)
    q_count, h, w = mask_pred.shape
    mprob = torch.sigmoid(mask_pred.double())
    kept = [q for q in range(q_count) if prob[q].argmax() != num_classes and prob[q].max() > object_thr]
    seg = [[0] * w for _ in range(h)]
    info = []
    if not kept:
        return seg, info
    owner = [[max(kept, key=lambda q: (prob[q].max() * mprob[q, y, x], -q)) for x in range(w)] for y in range(h)]
    stuff_ids = {}
    next_id = 0
    for q in kept:
        cls = int(prob[q].argmax())
        won = [(y, x) for y in range(h) for x in range(w) if owner[y][x] == q]
        full = sum(1 for y in range(h) for x in range(w) if mprob[q, y, x] >= 0.5)
        visible = [(y, x) for (y, x) in won if mprob[q, y, x] >= 0.5]
        if not won or full == 0 or not visible or len(won) / full < overlap_thr:
            continue
        if cls not in thing_classes and cls in stuff_ids:
            seg_id = stuff_ids[cls]
        else:
            next_id += 1
            seg_id = next_id
            if cls not in thing_classes:
                stuff_ids[cls] = seg_id
            info.append({"id": seg_id, "isthing": cls in thing_classes, "category_id": cls})
        for y, x in visible:
            seg[y][x] = seg_id
    return seg, info


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thresholds", [(0.0, 0.0), (0.4, 0.6)])
def test_panoptic_inference_matches_naive_pixel_rule(seed, thresholds):
    g = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(5, 5, generator=g) * 2
    mask_cls[seed % 5, 2] += 4  # a confident stuff query
    mask_cls[(seed + 1) % 5, 2] += 3  # a second query of the same stuff class
    mask_pred = torch.randn(5, 6, 7, generator=g) * 3
    model = make_model(object_mask_threshold=thresholds[0], overlap_threshold=thresholds[1])
    seg, info = model.panoptic_inference(mask_cls, mask_pred)
    ref_seg, ref_info = naive_panoptic(mask_cls, mask_pred, 4, {0, 1}, *thresholds)
    assert seg.tolist() == ref_seg
    assert info == ref_info


def test_panoptic_without_kept_queries_is_all_void():
    model = make_model()
    mask_cls = torch.zeros(5, 5)
    mask_cls[:, 4] = 5  # every query says "no object"
    seg, info = model.panoptic_inference(mask_cls, torch.randn(5, 4, 4))
    assert info == [] and seg.dtype == torch.int32 and not seg.any()


def test_same_stuff_class_merges_into_one_segment():
    model = make_model()
    mask_cls = torch.full((5, 5), -10.0)
    mask_cls[0, 3] = mask_cls[1, 3] = 10.0  # two "stuff 3" queries
    mask_cls[2:, 4] = 10.0
    mask_pred = torch.full((5, 4, 6), -10.0)
    mask_pred[0, :, :3] = 10.0
    mask_pred[1, :, 3:] = 10.0
    seg, info = model.panoptic_inference(mask_cls, mask_pred)
    assert info == [{"id": 1, "isthing": False, "category_id": 3}]
    assert (seg == 1).all()


def naive_boxes(masks):
    return BitMasks(masks.bool()).get_bounding_boxes().tensor


def test_masks_to_boxes_equals_detectron2_bitmasks():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 9, 11, dtype=torch.bool)
    masks[0, 2:5, 3:8] = True
    masks[1, 8, 10] = True
    masks[3] = torch.rand(9, 11, generator=g) > 0.8
    boxes = masks_to_boxes(masks.float())
    assert torch.equal(boxes, naive_boxes(masks))
    assert boxes[2].tolist() == [0, 0, 0, 0]
    assert masks_to_boxes(torch.zeros(0, 3, 3)).shape == (0, 4)


@pytest.mark.parametrize("panoptic_on", [True, False])
def test_instance_inference_topk_scores_and_boxes(panoptic_on):
    g = torch.Generator().manual_seed(5)
    mask_cls = torch.randn(5, 5, generator=g) * 2
    mask_pred = torch.randn(5, 8, 9, generator=g) * 2
    model = make_model(panoptic_on=panoptic_on, topk=7)
    inst = model.instance_inference(mask_cls, mask_pred)
    assert isinstance(inst, Instances) and inst.image_size == (8, 9)

    prob = torch.softmax(mask_cls, -1)[:, :4]
    pairs = sorted(((prob[q, c].item(), q, c) for q in range(5) for c in range(4)), reverse=True)[:7]
    if panoptic_on:
        pairs = [p for p in pairs if p[2] in (0, 1)]
    expected = []
    for score, q, c in pairs:
        binary = mask_pred[q] > 0
        mean_prob = torch.sigmoid(mask_pred[q])[binary].sum().item() / (binary.sum().item() + 1e-6)
        expected.append((c, score * mean_prob, binary))
    expected.sort(key=lambda e: e[1])
    order = inst.scores.argsort()
    assert inst.pred_classes[order].tolist() == [e[0] for e in expected]
    torch.testing.assert_close(inst.scores[order], torch.tensor([e[1] for e in expected]), rtol=1e-5, atol=0)
    masks = torch.stack([e[2] for e in expected]) if expected else torch.zeros(0, 8, 9, dtype=torch.bool)
    assert torch.equal(inst.pred_masks[order].bool(), masks)
    assert torch.equal(inst.pred_boxes.tensor[order], naive_boxes(masks))


def test_instance_topk_larger_than_queries_times_classes_keeps_everything():
    model = make_model(panoptic_on=False, topk=100)
    inst = model.instance_inference(torch.randn(5, 5), torch.randn(5, 4, 4))
    assert len(inst) == 20


# ----------------------------------------------------------------------------------------------
# forward: preprocessing, padding, resizing


def test_forward_normalises_pads_and_resizes_to_requested_size():
    model = make_model()
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 80, "width": 100}])
    fed = model.backbone.last_input
    assert fed.shape == (1, 3, 64, 64)
    mean, std = torch.tensor([100.0, 110, 120]).view(3, 1, 1), torch.tensor([50.0, 60, 70]).view(3, 1, 1)
    expected = (image.float() - mean) / std
    assert torch.equal(fed[0, :, :40, :50], expected)
    assert not fed[0, :, 40:].any() and not fed[0, :, :, 50:].any()
    assert out["sem_seg"].shape == (4, 80, 100)
    assert out["panoptic_seg"][0].shape == (80, 100)
    assert out["instances"].image_size == (80, 100)

    # The same numbers by hand: upsample to the padded size, crop, resize to the output size.
    outputs = model.sem_seg_head({"res2": fed})
    masks = F.interpolate(outputs["pred_masks"], size=(64, 64), mode="bilinear", align_corners=False)
    masks = masks[0, :, :40, :50]
    masks = F.interpolate(masks[None], size=(80, 100), mode="bilinear", align_corners=False)[0]
    sem = torch.einsum("qc,qhw->chw", torch.softmax(outputs["pred_logits"][0], -1)[:, :-1], masks.sigmoid())
    torch.testing.assert_close(out["sem_seg"], sem, rtol=1e-6, atol=1e-6)


def test_semantic_only_resizes_the_result_instead_of_the_masks():
    model = make_model(panoptic_on=False, instance_on=False, before_inference=False)
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 20, "width": 25}])
        outputs = model.sem_seg_head({"res2": model.backbone.last_input})
    masks = F.interpolate(outputs["pred_masks"], size=(64, 64), mode="bilinear", align_corners=False)[0]
    sem = torch.einsum("qc,qhw->chw", torch.softmax(outputs["pred_logits"][0], -1)[:, :-1], masks.sigmoid())
    sem = F.interpolate(sem[None, :, :40, :50], size=(20, 25), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out["sem_seg"], sem, rtol=1e-6, atol=1e-6)
    assert set(out) == {"sem_seg"}


def test_resize_to_output_is_detectron2_sem_seg_postprocess():
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    x = torch.randn(3, 32, 32)
    for size in [(20, 30), (30, 20)]:
        assert torch.equal(resize_to_output(x, (20, 30), *size), sem_seg_postprocess(x, (20, 30), *size))


def test_image_smaller_than_size_divisibility_and_grey_and_numpy_inputs():
    model = make_model()
    with torch.no_grad():
        (small,) = model([{"image": torch.full((3, 5, 7), 128, dtype=torch.uint8)}])
        assert model.backbone.last_input.shape[-2:] == (32, 32)
        assert small["sem_seg"].shape == (4, 5, 7)

        grey = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)
        (a,) = model([{"image": grey}])
        (b,) = model([{"image": grey.expand(3, -1, -1).clone()}])
        assert torch.equal(a["sem_seg"], b["sem_seg"])

        rgb = np.random.RandomState(0).randint(0, 256, (3, 32, 32)).astype(np.uint8)
        (c,) = model([{"image": rgb}])
        (d,) = model([{"image": torch.from_numpy(rgb).float()}])
        assert torch.equal(c["sem_seg"], d["sem_seg"])


@pytest.mark.parametrize(
    "image,error,match",
    [
        (torch.zeros(4, 32, 32, dtype=torch.uint8), ValueError, "4 channels|RGBA"),
        (torch.zeros(32, 32, 3, dtype=torch.uint8), ValueError, "permute it to C, H, W"),
        (torch.full((3, 8, 8), 1000, dtype=torch.int16), ValueError, r"values in \[1000, 1000\]"),
        (torch.zeros(3, 8, 8, dtype=torch.bool), TypeError, "dtype torch.bool"),
        (torch.zeros(3, 0, 8, dtype=torch.uint8), ValueError, "empty"),
        ([[0, 1]], TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_images_give_clear_errors(image, error, match):
    with pytest.raises(error, match=match):
        make_model()([{"image": image}])


def test_training_forward_returns_weighted_losses():
    model = make_model().train()
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    instances = Instances((40, 50))
    instances.gt_classes = torch.tensor([1, 3])
    gt = torch.zeros(2, 40, 50, dtype=torch.bool)
    gt[0, 5:20, 5:30] = True
    gt[1, 25:, :] = True
    instances.gt_masks = gt
    torch.manual_seed(0)
    losses = model([{"image": image, "instances": instances}])
    torch.manual_seed(0)
    images = model.preprocess_image([{"image": image}])
    raw = model.criterion(model.sem_seg_head({"res2": images.tensor}),
                          [{"labels": instances.gt_classes, "masks": F.pad(gt, (0, 14, 0, 24))}])
    assert list(losses) == list(raw)
    for k in raw:
        assert torch.equal(losses[k], raw[k] * model.criterion.weight_dict[k])

    instances.gt_masks = BitMasks(gt)  # BitMasks are accepted too
    torch.manual_seed(0)
    again = model([{"image": image, "instances": instances}])
    assert all(torch.equal(again[k], losses[k]) for k in losses)


def test_pixel_stats_are_non_persistent_and_semantic_off_needs_postprocess_first():
    model = make_model()
    assert "pixel_mean" not in model.state_dict() and "criterion.empty_weight" in model.state_dict()
    with pytest.raises(ValueError, match="SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE"):
        make_model(semantic_on=False, panoptic_on=False, instance_on=False, before_inference=False)


def reference_formulas(model, mask_cls, mask_pred):
    """The reference implementation's post-processing written out step by step, unoptimised
    (per-query loops, argmax over queries, per-pair mask gathers), as described in
    tests/data/golden/README.md."""
    num_classes = model.sem_seg_head.num_classes
    things = set(model.metadata.thing_dataset_id_to_contiguous_id.values())
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    prob = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > model.object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], prob[keep]
    seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    info, stuff, next_id = [], {}, 0
    if len(cur_masks):
        ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
        for k in range(len(cur_classes)):
            cls = cur_classes[k].item()
            area, full = (ids == k).sum().item(), (cur_masks[k] >= 0.5).sum().item()
            region = (ids == k) & (cur_masks[k] >= 0.5)
            if area > 0 and full > 0 and region.sum().item() > 0:
                if area / full < model.overlap_threshold:
                    continue
                if cls not in things and cls in stuff:
                    seg[region] = stuff[cls]
                    continue
                if cls not in things:
                    stuff[cls] = next_id + 1
                next_id += 1
                seg[region] = next_id
                info.append({"id": next_id, "isthing": cls in things, "category_id": cls})

    class_scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    pair_labels = torch.arange(num_classes).unsqueeze(0).repeat(mask_cls.shape[0], 1).flatten()
    top_scores, top = class_scores.flatten().topk(model.test_topk_per_image, sorted=False)
    top_labels, top_queries = pair_labels[top], top // num_classes
    is_thing = torch.tensor([lab.item() in things for lab in top_labels], dtype=torch.bool)
    if model.panoptic_on:
        top_scores, top_labels, top_queries = top_scores[is_thing], top_labels[is_thing], top_queries[is_thing]
    masks = mask_pred[top_queries]
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    sem = torch.einsum("qc,qhw->chw", F.softmax(mask_cls, dim=-1)[:, :-1], prob)
    return sem, (seg, info), (top_scores * mask_scores, top_labels, binary)


def _coco_like_class_logits(g, kind):
    """Class logits (100, 134) for the post-processing cases: "mixed" (confident things and stuff,
    shared classes, most queries unsure), "every query" (each sure of a thing class: the top
    pairs hold every query once), "two classes" (60 queries each sure of two thing classes: the
    pairs hold many of them twice), "few" (five confident queries: a small subset)."""
    mask_cls = torch.randn(100, 134, generator=g) * 3
    if kind == "mixed":
        mask_cls[:20, :80] += torch.eye(20, 80) * 12  # confident things
        mask_cls[30:40, 100:110] += torch.eye(10) * 12  # confident stuff
        mask_cls[40:45, 100] += 12  # several queries of one stuff class
        mask_cls[50:55, 3] += 12  # several queries of one thing class
    elif kind == "every query":
        mask_cls[torch.arange(100), torch.arange(100) % 80] += 30
    elif kind == "two classes":
        mask_cls[torch.arange(60), torch.arange(60)] += 30
        mask_cls[torch.arange(60), torch.arange(60) + 7] += 30
        mask_cls[60:, 133] += 60
    else:  # the other queries' class probabilities are far below any of these five's
        mask_cls[:5, :5] += torch.eye(5) * 30
        mask_cls[5:, 133] += 60
    return mask_cls


@pytest.mark.parametrize(
    "thresholds,kind,size",
    [
        ((0.0, 0.0), "mixed", (96, 120)),
        ((0.8, 0.1), "mixed", (96, 120)),
        ((0.8, 0.1), "every query", (96, 120)),
        ((0.8, 0.1), "every query", (77, 101)),
        ((0.0, 0.0), "two classes", (77, 101)),
        ((0.8, 0.1), "few", (61, 67)),
    ],
)
def test_optimised_postprocessing_is_bitwise_identical_to_the_reference_formulas(thresholds, kind, size):
    """COCO-like sizes (100 queries, 133 classes): the vectorised panoptic merge and the per-query
    instance statistics (computed on the masks in place when every query is among the top pairs,
    a few rows at a time) must not change a single bit; semantic scores are a matrix product."""

    class Head(nn.Module):
        num_classes = 133

    class CocoLike:
        name = "coco-like"
        thing_dataset_id_to_contiguous_id = {i + 1: i for i in range(80)}

    model = MaskFormer(
        backbone=nn.Identity(), sem_seg_head=Head(), criterion=None, num_queries=100,
        object_mask_threshold=thresholds[0], overlap_threshold=thresholds[1], metadata=CocoLike(),
        size_divisibility=32, sem_seg_postprocess_before_inference=True, pixel_mean=[0, 0, 0],
        pixel_std=[1, 1, 1], semantic_on=True, panoptic_on=True, instance_on=True, test_topk_per_image=100,
    )
    g = torch.Generator().manual_seed(0)
    mask_cls = _coco_like_class_logits(g, kind)
    mask_pred = F.interpolate(torch.randn(1, 100, 24, 30, generator=g) * 3, size, mode="bilinear")[0]

    out = model.postprocess(mask_cls, mask_pred)
    sem, (seg, info), (scores, labels, masks) = reference_formulas(model, mask_cls, mask_pred)
    # The semantic product goes through oneDNN on the CPU: bit-identical here with 100 queries
    # (tools/benchmark_postprocess.py reports it), float32 rounding in general.
    torch.testing.assert_close(out["sem_seg"], sem, rtol=2e-6, atol=1e-7)
    assert torch.equal(out["panoptic_seg"][0], seg) and out["panoptic_seg"][1] == info
    assert len(info) > 3 or kind != "mixed"
    inst = out["instances"]
    assert torch.equal(inst.scores, scores) and torch.equal(inst.pred_classes, labels)
    assert torch.equal(inst.pred_masks, masks) and len(inst) > (20 if kind != "few" else 4)
    assert torch.equal(inst.pred_boxes.tensor, naive_boxes(masks))


def _unique_row_statistics(mask_pred, mask_prob, query_indices):
    """Mean probability inside each pair's mask, the straightforward way: full-size gathers of the
    distinct queries' logits and probabilities, float masks, one sum over them, then per pair."""
    unique_queries, position = torch.unique(query_indices, return_inverse=True)
    binary = (mask_pred[unique_queries] > 0).float().flatten(1)
    scores = (mask_prob[unique_queries].flatten(1) * binary).sum(1) / (binary.sum(1) + 1e-6)
    return scores[position]


@pytest.mark.parametrize("size", [(96, 120), (77, 101), (512, 512)])
@pytest.mark.parametrize("queries", [[3], [3, 3], [0, 1], [4, 4, 1], list(range(10)), [9, 2, 2, 5, 0, 7, 1]])
def test_instance_mask_scores_are_bitwise_the_unique_row_formula(size, queries):
    """Whatever the pairs (one query, one query twice, duplicates, all queries in any order), the
    blocked sums give the bits of the one-tensor formula over the distinct queries."""
    g = torch.Generator().manual_seed(len(queries))
    mask_pred = torch.randn(10, *size, generator=g) * 3
    mask_prob = mask_pred.sigmoid()
    query_indices = torch.tensor(queries)
    # One class per query, so that instance inference keeps exactly these pairs.
    mask_cls = torch.full((10, 4), -50.0)
    mask_cls[:, 3] = 0.0
    for k, q in enumerate(queries):
        mask_cls[q, k % 3] = 50.0 - k
    topk = len(queries)
    inst = instance_inference(mask_cls, mask_pred, num_classes=3, topk_per_image=topk, mask_prob=mask_prob)
    class_scores = F.softmax(mask_cls, dim=-1)[:, :-1].flatten()
    pair_scores, top = class_scores.topk(topk, sorted=False)
    expected = pair_scores * _unique_row_statistics(mask_pred, mask_prob, top // 3)
    assert sorted((top // 3).tolist()) == sorted(queries)
    assert torch.equal(inst.scores, expected)
    assert torch.equal(inst.pred_masks, (mask_pred[top // 3] > 0).float())
