"""Our panoptic inference against MMDetection's panoptic fusion (MaskFormerFusionHead.panoptic_postprocess
with ViT-Adapter's test settings: object_mask_thr 0.8, iou_thr 0.8, filter_low_score True), written
here from its documented rules: for the same class logits and mask logits both give the same segments,
so the published model needs no other post-processing."""
import pytest
import torch

from test_inference import make_model

NUM_CLASSES, THINGS = 4, 2  # make_model's metadata: classes 0, 1 things, 2, 3 stuff
INSTANCE_OFFSET = 1000


def mmdet_panoptic_fusion(mask_cls, mask_pred, object_mask_thr=0.8, iou_thr=0.8, filter_low_score=True):
    """MMDetection's rules: keep queries whose best class is not "no object" and scores > thr; each
    pixel goes to the kept query with the largest score * mask probability; a query whose won area is
    below iou_thr of its own mask (probability >= 0.5) is dropped; with filter_low_score, it only paints
    the won pixels where its probability is >= 0.5. Things get class + k * INSTANCE_OFFSET (k counting
    from 1), stuff the class; unpainted pixels NUM_CLASSES."""
    scores, labels = mask_cls.softmax(-1).max(-1)
    probs = mask_pred.sigmoid()
    kept = [q for q in range(len(scores)) if labels[q] != NUM_CLASSES and scores[q] > object_mask_thr]
    h, w = probs.shape[-2:]
    result = torch.full((h, w), NUM_CLASSES, dtype=torch.int64)
    if not kept:
        return result
    weighted = torch.stack([scores[q] * probs[q] for q in kept])
    winner = weighted.argmax(0)
    instance = 1
    for k, q in enumerate(kept):
        won = winner == k
        area, own = int(won.sum()), int((probs[q] >= 0.5).sum())
        if filter_low_score:
            won = won & (probs[q] >= 0.5)
        if area == 0 or own == 0 or area / own < iou_thr:
            continue
        cls = int(labels[q])
        if cls < THINGS:
            result[won] = cls + instance * INSTANCE_OFFSET
            instance += 1
        else:
            result[won] = cls
    return result


def segments_from_mmdet(result):
    return {
        (frozenset(torch.nonzero(result.flatten() == value).flatten().tolist()), int(value) % INSTANCE_OFFSET)
        for value in result.unique().tolist()
        if value % INSTANCE_OFFSET != NUM_CLASSES
    }


def segments_from_ours(panoptic_seg, segments_info):
    return {
        (frozenset(torch.nonzero(panoptic_seg.flatten() == s["id"]).flatten().tolist()), s["category_id"])
        for s in segments_info
        if (panoptic_seg == s["id"]).any()
    }


def both_fusions(seed, **mmdet_options):
    g = torch.Generator().manual_seed(seed)
    queries = 12
    # Confident classes (so that most queries pass 0.8, a few not), repeated stuff classes, and masks
    # that are noisy rectangles, overlapping each other, so that the overlap rule and the >= 0.5
    # filter both decide some segments.
    labels = torch.randint(0, NUM_CLASSES + 1, (queries,), generator=g)
    mask_cls = torch.randn(queries, NUM_CLASSES + 1, generator=g)
    mask_cls[torch.arange(queries), labels] += torch.empty(queries).uniform_(1.0, 7.0, generator=g)
    mask_pred = torch.full((queries, 20, 24), -3.0) + torch.randn(queries, 20, 24, generator=g)
    for q in range(queries):
        y0, x0 = torch.randint(0, 14, (1,), generator=g).item(), torch.randint(0, 18, (1,), generator=g).item()
        h, w = torch.randint(3, 12, (2,), generator=g).tolist()
        mask_pred[q, y0 : y0 + h, x0 : x0 + w] += 6.0
    model = make_model(object_mask_threshold=0.8, overlap_threshold=0.8)
    ours = segments_from_ours(*model.panoptic_inference(mask_cls, mask_pred))
    theirs = segments_from_mmdet(mmdet_panoptic_fusion(mask_cls, mask_pred, **mmdet_options))
    return ours, theirs


@pytest.mark.parametrize("seed", range(12))
def test_same_segments_as_mmdetection_fusion(seed):
    ours, theirs = both_fusions(seed)
    assert ours == theirs


def test_the_cases_are_not_trivial():
    segments = [both_fusions(seed)[1] for seed in range(12)]
    assert sum(len(s) for s in segments) >= 24
    assert sum(1 for s in segments for _, category in s if category >= THINGS) >= 6  # stuff too
    # They separate the rules: without MMDetection's filter_low_score the segments differ.
    assert any(ours != theirs for ours, theirs in (both_fusions(seed, filter_low_score=False) for seed in range(12)))
