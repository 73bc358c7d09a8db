"""mask2former_video modeling against independent computations: the 3-D position encoding, the
matcher's costs and assignment, the losses, inference post-processing; a tiny training step."""
import itertools
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, ImageList, Instances

import mask2former_video  # noqa: F401  (registers the video meta-architecture and decoder)
from mask2former.engine import load_config
from mask2former_video import add_maskformer2_video_config
from mask2former_video.modeling import (
    PositionEmbeddingSine3D,
    VideoHungarianMatcher,
    VideoSetCriterion,
)
from mask2former_video.video_maskformer_model import VideoMaskFormer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from benchmark_video_inference import upsample_everything_inference  # noqa: E402


# ---------------------------------------------------------------------------------------------
# independent helpers
def naive_bilinear(mask, x, y):
    """Value of mask (H, W) at normalised (x, y) in [0, 1]: pixel centres at (i + 0.5) / size,
    zero outside (grid_sample's align_corners=False, zero padding), written out by hand."""
    height, width = mask.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    value = 0.0
    for xi, yi in itertools.product((x0, x0 + 1), (y0, y0 + 1)):
        weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
        if 0 <= xi < width and 0 <= yi < height:
            value += weight * float(mask[yi, xi])
    return value


def bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def dice(logits, targets):
    probs = [1 / (1 + math.exp(-v)) for v in logits]
    inter = sum(p * t for p, t in zip(probs, targets))
    return 1 - (2 * inter + 1) / (sum(probs) + sum(targets) + 1)


# ---------------------------------------------------------------------------------------------
def test_position_encoding_3d_matches_naive_loop():
    num_feats, temperature, scale = 4, 10000, 2 * math.pi
    b, t, h, w = 2, 3, 2, 4
    pe = PositionEmbeddingSine3D(num_feats, temperature=temperature, normalize=True)
    out = pe(torch.zeros(b, t, 7, h, w))
    assert out.shape == (b, t, 2 * num_feats, h, w)

    def sine(pos, channel, count):
        angle = pos / temperature ** (2 * (channel // 2) / count)
        return math.sin(angle) if channel % 2 == 0 else math.cos(angle)

    for ti, yi, xi in itertools.product(range(t), range(h), range(w)):
        py = (yi + 1) / (h + 1e-6) * scale
        px = (xi + 1) / (w + 1e-6) * scale
        pt = (ti + 1) / (t + 1e-6) * scale
        for c in range(2 * num_feats):
            spatial = sine(py, c, num_feats) if c < num_feats else sine(px, c - num_feats, num_feats)
            expected = spatial + sine(pt, c, 2 * num_feats)
            for bi in range(b):
                assert abs(out[bi, ti, c, yi, xi].item() - expected) < 1e-5, (bi, ti, c, yi, xi)


def test_matcher_costs_and_assignment_match_naive_pairs():
    torch.manual_seed(0)
    num_queries, num_classes, num_targets, frames, points = 4, 3, 3, 2, 12
    pred_logits = torch.randn(num_queries, num_classes + 1)
    pred_masks = torch.randn(num_queries, frames, 5, 6)
    tgt_masks = (torch.rand(num_targets, frames, 10, 12) > 0.5).float()
    tgt_labels = torch.tensor([2, 0, 2])
    matcher = VideoHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=points)
    costs = matcher.compute_costs(pred_logits, pred_masks, tgt_labels, tgt_masks)
    coords = costs["point_coords"][0].tolist()

    probs = pred_logits.softmax(-1)
    expected = torch.zeros(num_queries, num_targets)
    for q, n in itertools.product(range(num_queries), range(num_targets)):
        # The same points in every frame: T x P values per mask.
        logits = [naive_bilinear(pred_masks[q, f], x, y) for f in range(frames) for x, y in coords]
        targets = [naive_bilinear(tgt_masks[n, f], x, y) for f in range(frames) for x, y in coords]
        mask_cost = sum(bce(v, tv) for v, tv in zip(logits, targets)) / len(logits)
        expected[q, n] = 5.0 * mask_cost - 2.0 * probs[q, tgt_labels[n]] + 5.0 * dice(logits, targets)
    torch.testing.assert_close(costs["cost_matrix"], expected, rtol=1e-4, atol=1e-4)

    # The assignment minimises the total cost: brute force over all injective assignments.
    torch.manual_seed(1)
    (query_idx, target_idx), = matcher(
        {"pred_logits": pred_logits[None], "pred_masks": pred_masks[None]},
        [{"labels": tgt_labels, "masks": tgt_masks}],
    )
    torch.manual_seed(1)
    cost = matcher.compute_costs(pred_logits, pred_masks, tgt_labels, tgt_masks)["cost_matrix"]
    best = min(
        itertools.permutations(range(num_queries), num_targets),
        key=lambda qs: sum(cost[q, n].item() for n, q in enumerate(qs)),
    )
    assert dict(zip(target_idx.tolist(), query_idx.tolist())) == dict(enumerate(best))


class FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


@pytest.mark.parametrize("importance_sample_ratio", [0.0, 0.6])
def test_losses_match_naive_per_frame_computation(importance_sample_ratio):
    torch.manual_seed(0)
    num_classes, frames, points = 3, 2, 10
    pred_logits = torch.randn(2, 5, num_classes + 1)
    pred_masks = torch.randn(2, 5, frames, 6, 6)
    targets = [
        {"labels": torch.tensor([1, 2]), "masks": (torch.rand(2, frames, 12, 12) > 0.5).float()},
        {"labels": torch.tensor([0]), "masks": (torch.rand(1, frames, 12, 12) > 0.5).float()},
    ]
    indices = [(torch.tensor([3, 0]), torch.tensor([1, 0])), (torch.tensor([4]), torch.tensor([0]))]
    # Points per (instance, frame): of 3 x points uniform candidates, the importance_sample_ratio
    # fraction whose predicted logit is closest to 0, then uniform points for the rest; the naive
    # computation replays those draws.
    oversample = 3
    criterion = VideoSetCriterion(
        num_classes, FixedMatcher(indices), weight_dict={}, eos_coef=0.1, losses=["labels", "masks"],
        num_points=points, oversample_ratio=float(oversample), importance_sample_ratio=importance_sample_ratio,
    )
    torch.manual_seed(5)
    losses = criterion({"pred_logits": pred_logits, "pred_masks": pred_masks}, targets)

    torch.manual_seed(5)
    num_pairs = 3 * frames
    num_uncertain = int(importance_sample_ratio * points)
    candidates = torch.rand(num_pairs, oversample * points, 2).tolist()
    uniform = torch.rand(num_pairs, points - num_uncertain, 2).tolist()
    num_instances = 3
    loss_mask = loss_dice = 0.0
    row = 0
    for b, (src, tgt) in enumerate(indices):
        for q, n in zip(src.tolist(), tgt.tolist()):
            for f in range(frames):  # pairs in (instance, frame) order
                uncertainty = [-abs(naive_bilinear(pred_masks[b, q, f], x, y)) for x, y in candidates[row]]
                chosen = sorted(range(len(uncertainty)), key=lambda i: -uncertainty[i])[:num_uncertain]
                pts = [candidates[row][i] for i in chosen] + uniform[row]
                row += 1
                logits = [naive_bilinear(pred_masks[b, q, f], x, y) for x, y in pts]
                labels = [naive_bilinear(targets[b]["masks"][n, f], x, y) for x, y in pts]
                loss_mask += sum(bce(v, t) for v, t in zip(logits, labels)) / points
                loss_dice += dice(logits, labels)
    assert losses["loss_mask"].item() == pytest.approx(loss_mask / num_instances, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(loss_dice / num_instances, rel=1e-5)

    # Classification: weighted cross-entropy, unmatched queries are "no object" (weight 0.1).
    total, weight_sum = 0.0, 0.0
    for b in range(2):
        matched = dict(zip(indices[b][0].tolist(), targets[b]["labels"][indices[b][1]].tolist()))
        for q in range(5):
            label = matched.get(q, num_classes)
            weight = 0.1 if label == num_classes else 1.0
            log_probs = pred_logits[b, q].log_softmax(-1)
            total += -weight * log_probs[label].item()
            weight_sum += weight
    assert losses["loss_ce"].item() == pytest.approx(total / weight_sum, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# inference post-processing
class _Head:
    def __init__(self, num_classes):
        self.num_classes = num_classes


class _Model:
    """What inference_video needs of the model: the number of classes."""

    def __init__(self, num_classes):
        self.sem_seg_head = _Head(num_classes)


def test_inference_hand_constructed_topk_crop_resize_threshold():
    num_classes, num_queries = 2, 6
    # Query q: logits (log a, log b, log c) -> softmax (a, b, c) / (a + b + c); with a + b + c = 1
    # the scores are a and b themselves.
    probs = torch.tensor(
        [[0.50, 0.30, 0.2], [0.05, 0.90, 0.05], [0.02, 0.03, 0.95], [0.40, 0.35, 0.25], [0.10, 0.60, 0.3],
         [0.01, 0.015, 0.975]]
    )
    pred_logits = probs.log()
    # Frame 0: columns + + - - at the decoder's resolution; frame 1 negated.
    column = torch.tensor([1.0, 1.0, -1.0, -1.0])
    base = column.expand(4, 4)
    pred_masks = torch.stack([base, -base])[None].repeat(num_queries, 1, 1, 1)  # (Q, T=2, 4, 4)
    out = VideoMaskFormer.inference_video(
        _Model(num_classes), pred_logits, pred_masks, image_size=(8, 6), padded_size=(8, 8), height=4, width=3
    )
    # The 12 (query, class) scores; the two lowest (0.01, 0.015 of query 5) are dropped.
    pairs = sorted(
        ((probs[q, c].item(), q, c) for q in range(num_queries) for c in range(num_classes)), reverse=True
    )[:10]
    assert out["pred_scores"] == pytest.approx([s for s, _, _ in pairs], abs=1e-6)
    assert out["pred_labels"] == [c for _, _, c in pairs]
    assert out["image_size"] == (4, 3)
    # Upsampled to 8 columns: 1, 1, 1, .5, -.5, -1, -1, -1; cropped to 6 (padding off), resized to
    # 3 columns: samples at 0.5, 2.5, 4.5 -> 1, .75, -.75 -> True, True, False. (Without the crop
    # the middle column would sample 0 and be False.) Rows are constant.
    frame0 = torch.tensor([True, True, False]).expand(4, 3)
    for mask in out["pred_masks"]:
        assert mask.dtype == torch.bool and mask.shape == (2, 4, 3)
        assert torch.equal(mask[0], frame0)
        assert torch.equal(mask[1], ~frame0)


def test_memory_lean_inference_equals_upsample_everything():
    torch.manual_seed(0)
    num_classes, num_queries = 5, 20
    pred_logits = torch.randn(num_queries, num_classes + 1) * 3
    pred_masks = torch.randn(num_queries, 3, 10, 12) * 4
    args = dict(image_size=(37, 45), padded_size=(40, 48), height=74, width=90)
    ours = VideoMaskFormer.inference_video(_Model(num_classes), pred_logits, pred_masks, **args)
    scores, labels, masks = upsample_everything_inference(pred_logits, pred_masks, **args)
    assert ours["pred_scores"] == scores.tolist()
    assert ours["pred_labels"] == labels.tolist()
    assert len(ours["pred_masks"]) == 10
    for a, b in zip(ours["pred_masks"], masks):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# the full model, tiny
TINY = [
    "MODEL.WEIGHTS", "",
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NHEADS", "2",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "4",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64",
]


def tiny_cfg(*opts):
    return load_config(
        os.path.join(REPO, "configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml"),
        TINY + list(opts),
        add_configs=(add_maskformer2_video_config,),
    )


def frame_instances(ids, classes, masks):
    inst = Instances(masks.shape[-2:])
    inst.gt_ids = torch.tensor(ids)
    inst.gt_classes = torch.tensor(classes)
    inst.gt_masks = BitMasks(masks)
    return inst


def random_clip(generator, frames=2, size=64):
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    instances = []
    for f in range(frames):
        m = masks.clone()
        m[0, 8 + 4 * f : 30 + 4 * f, 10:40] = True
        m[1, 40:60, 20 + 3 * f : 50] = True
        # Track 2 is absent from the last frame (id and class -1, empty mask, as the mapper gives).
        present = f < frames - 1
        if not present:
            m[1] = False
        instances.append(frame_instances([1, 2 if present else -1], [0, 2 if present else -1], m))
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator) for _ in range(frames)]
    return {"image": images, "instances": instances, "height": size, "width": size, "video_id": 7}


def test_target_class_rules():
    cfg = tiny_cfg()
    model = build_model(cfg)
    clip = random_clip(torch.Generator().manual_seed(0))
    images = ImageList.from_tensors([f.float() for f in clip["image"]], 32)
    (target,) = model.prepare_targets([clip], images)
    # Upstream's rule: track 2 is absent from the last frame -> "no object" (class K = 3).
    assert target["labels"].tolist() == [0, 3]
    assert target["masks"].shape == (2, 2, 64, 64)
    assert target["ids"].tolist() == [[1, 1], [2, -1]]
    model = build_model(tiny_cfg("MODEL.MASK_FORMER.VIDEO_TARGET_CLASS", "any_frame"))
    (target,) = model.prepare_targets([clip], images)
    assert target["labels"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="VIDEO_TARGET_CLASS"):
        build_model(tiny_cfg("MODEL.MASK_FORMER.VIDEO_TARGET_CLASS", "first_frame"))


def test_tiny_training_step_and_inference():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg)
    generator = torch.Generator().manual_seed(0)
    batch = [random_clip(generator), random_clip(generator)]
    model.train()
    losses = model(batch)
    assert set(losses) == {f"loss_{k}{s}" for k in ("ce", "mask", "dice") for s in ["", "_0", "_1", "_2"]}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    decoder = model.sem_seg_head.predictor
    params = dict(decoder.named_parameters())
    for name in (
        "query_feat.weight",
        "class_embed.weight",
        "transformer_cross_attention_layers.0.multihead_attn.in_proj_weight",
    ):
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.backbone.stem.conv1.weight.grad.abs().sum() > 0

    model.eval()
    video = {"image": [torch.randint(0, 256, (3, 48, 72), dtype=torch.uint8, generator=generator) for _ in range(3)],
             "height": 96, "width": 144, "video_id": 1}
    with torch.no_grad():
        out = model([video])
        model.frames_per_batch = 1
        chunked = model([video])
    assert out["image_size"] == (96, 144)
    assert len(out["pred_scores"]) == 10 and len(out["pred_labels"]) == 10
    assert all(m.shape == (3, 96, 144) and m.dtype == torch.bool for m in out["pred_masks"])
    # Backbone and pixel decoder frame by frame: the same predictions.
    assert chunked["pred_labels"] == out["pred_labels"]
    assert chunked["pred_scores"] == pytest.approx(out["pred_scores"], abs=1e-5)

    model.max_num_frames = 2
    with pytest.raises(ValueError, match="video 1 .*MAX_NUM_FRAMES=2"):
        model([video])
    with pytest.raises(ValueError, match="one video at a time"):
        model([video, video])


def test_out_of_memory_says_how_to_bound_it(monkeypatch):
    model = build_model(tiny_cfg()).eval()

    def allocation_fails(frames):
        # What the CPU allocator raises (the CUDA one raises torch.OutOfMemoryError).
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(model, "predict_video", allocation_fails)
    video = {"image": [torch.zeros(3, 32, 32, dtype=torch.uint8)] * 5, "video_id": 12}
    with pytest.raises(MemoryError, match=r"video 12 \(5 frames of \(32, 32\)\).*FRAMES_PER_BATCH.*MAX_NUM_FRAMES"):
        model([video])


def test_training_clip_may_mix_frame_sizes_inference_may_not():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    generator = torch.Generator().manual_seed(0)
    clip = random_clip(generator)
    # Frame 0 resized on its own (per-frame scale sampling): 48 x 64.
    clip["image"][0] = clip["image"][0][:, :48]
    first = clip["instances"][0]
    small_masks = first.gt_masks.tensor[:, :48]
    clip["instances"][0] = frame_instances(first.gt_ids.tolist(), first.gt_classes.tolist(), small_masks)
    images = ImageList.from_tensors([f.float() for f in clip["image"]], 32)
    (target,) = model.prepare_targets([clip], images)
    assert target["masks"].shape == (2, 2, 64, 64)
    assert torch.equal(target["masks"][:, 0, :48], small_masks.float())
    assert not target["masks"][:, 0, 48:].any()  # padding
    assert torch.equal(target["masks"][:, 1], clip["instances"][1].gt_masks.tensor.float())

    model.train()
    losses = model([clip, random_clip(generator)])
    assert torch.isfinite(sum(losses.values()))

    model.eval()
    with pytest.raises(ValueError, match="video 7.*differ in size"):
        model([{"image": clip["image"], "video_id": 7}])


def test_decoder_memory_holds_all_frames_and_mask_attention_spans_them():
    """The first cross-attention layer's inputs, rebuilt element by element: memory position
    (t, y, x) of clip b is frame b*T + t's projected feature at (y, x); its attention mask is the
    first prediction's mask of frame t, resized to that level, below 0.5 after a sigmoid."""
    torch.manual_seed(0)
    cfg = tiny_cfg("MODEL.MASK_FORMER.NHEADS", "2")
    decoder = build_model(cfg).sem_seg_head.predictor.train()
    clips, frames, channels = 2, 3, 32
    sizes = [(2, 3), (4, 5), (6, 7)]
    x = [torch.randn(clips * frames, channels, h, w) for h, w in sizes]
    mask_features = torch.randn(clips * frames, 32, 12, 14)
    captured = {}
    layer = decoder.transformer_cross_attention_layers[0]
    layer.register_forward_hook(
        lambda module, args, kwargs, output: captured.update(args=args, kwargs=kwargs), with_kwargs=True
    )
    decoder.num_frames = frames
    out = decoder(x, mask_features)

    memory = captured["args"][1]
    attn_mask = captured["kwargs"]["memory_mask"]
    h, w = sizes[0]
    projected = decoder.input_proj[0](x[0]) + decoder.level_embed.weight[0][None, :, None, None]
    queries = decoder.decoder_norm(decoder.query_feat.weight)
    first_mask_embed = decoder.mask_embed(queries)  # (Q, C): the same for every clip
    num_queries = queries.shape[0]
    assert memory.shape == (frames * h * w, clips, channels)
    assert attn_mask.shape == (clips * decoder.num_heads, num_queries, frames * h * w)
    expected_mask = torch.zeros(clips, num_queries, frames * h * w, dtype=torch.bool)
    for b, t in itertools.product(range(clips), range(frames)):
        frame = b * frames + t
        logits = torch.einsum("qc,chw->qhw", first_mask_embed, mask_features[frame])
        small = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        for y, xx in itertools.product(range(h), range(w)):
            s = t * h * w + y * w + xx
            torch.testing.assert_close(memory[s, b], projected[frame, :, y, xx])
            for q in range(num_queries):
                expected_mask[b, q, s] = bool(small[q, y, xx].sigmoid() < 0.5)
    assert expected_mask.any() and not expected_mask.all()  # a case where the layout matters
    for b, q in itertools.product(range(clips), range(num_queries)):
        if expected_mask[b, q].all():
            expected_mask[b, q] = False  # a query masked everywhere attends everywhere instead
        for head in range(decoder.num_heads):
            assert torch.equal(attn_mask[b * decoder.num_heads + head, q], expected_mask[b, q]), (b, q, head)
    # Final masks: one per frame, (B, Q, T, H, W); auxiliary predictions in training.
    assert out["pred_masks"].shape == (clips, num_queries, frames, 12, 14)
    assert len(out["aux_outputs"]) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
