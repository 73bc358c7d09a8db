"""YouTube-VIS evaluation: spatio-temporal IoU and AP against hand-computed values and naive loops."""
import importlib.util
import json
import math
import os

import mask2former  # noqa: F401  isort: skip

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import MetadataCatalog

from mask2former_video.data_video.ytvis_eval import YTVISEvaluator, _track, evaluate_ytvis, spatio_temporal_iou

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 10, 10


def box(rows, cols):
    mask = np.zeros((H, W), bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def rle(mask):
    if mask is None:
        return None
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def hand_case():
    """
    Video 1, GT A (category 1): 25 px in frames 0 and 1, absent in frame 2.
      p1 (0.9): the same 25 px, then 20 of A's 25 px, then 5 px elsewhere: IoU = 45 / 55 = 0.818.
    Video 2, GT B (category 1): 20 px in each frame.
      p2 (0.8): 14, 14 and 16 px inside B: IoU = 44 / 60 = 0.733.
      p3 (0.7): disjoint from B: a false positive.
    p0 (0.95, category 2 in video 1): no GT of category 2, so category 2 has no AP.
    """
    a = box((0, 5), (0, 5))
    b = box((0, 2), (0, 10))
    gt = {
        "videos": [
            {"id": 1, "file_names": ["1/0.jpg", "1/1.jpg", "1/2.jpg"], "height": H, "width": W, "length": 3},
            {"id": 2, "file_names": ["2/0.jpg", "2/1.jpg", "2/2.jpg"], "height": H, "width": W, "length": 3},
        ],
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [rle(a), rle(a), None]},
            {"id": 2, "video_id": 2, "category_id": 1, "iscrowd": 0, "segmentations": [rle(b)] * 3},
        ],
    }
    predictions = [
        {"video_id": 1, "category_id": 1, "score": 0.9,
         "segmentations": [rle(a), rle(box((0, 5), (0, 4))), rle(box((8, 9), (0, 5)))]},
        {"video_id": 2, "category_id": 1, "score": 0.8,
         "segmentations": [rle(box((0, 2), (0, 7))), rle(box((0, 2), (0, 7))), rle(box((0, 2), (0, 8)))]},
        {"video_id": 2, "category_id": 1, "score": 0.7, "segmentations": [rle(box((5, 9), (5, 9)))] * 3},
        {"video_id": 1, "category_id": 2, "score": 0.95, "segmentations": [rle(a)] * 3},
    ]
    return gt, predictions


def test_hand_computed_case():
    gt, predictions = hand_case()
    metrics, per_category, _ = evaluate_ytvis(gt, predictions)
    # IoU thresholds 0.50:0.05:0.95. p1 matches A up to 0.80, p2 matches B up to 0.70.
    # 5 thresholds (0.50-0.70): both found before the false positive -> AP 1.
    # 2 thresholds (0.75, 0.80): only A found, at precision 1 -> recall 0.5 -> 51 of 101 recall points.
    # 3 thresholds (0.85-0.95): AP 0.
    expected_ap = (5 * 1.0 + 2 * 51 / 101) / 10 * 100
    assert metrics["AP"] == pytest.approx(expected_ap)
    assert metrics["AP50"] == pytest.approx(100.0)
    assert metrics["AP75"] == pytest.approx(51 / 101 * 100)
    # Average areas 25 and 20 px: both tracks are small.
    assert metrics["APs"] == pytest.approx(expected_ap)
    assert math.isnan(metrics["APm"]) and math.isnan(metrics["APl"])
    # One detection per video and category (p1, p2): recall 1 at 5 thresholds, 0.5 at 2.
    assert metrics["AR1"] == pytest.approx((5 * 1.0 + 2 * 0.5) / 10 * 100)
    assert metrics["AR10"] == pytest.approx(metrics["AR1"])
    assert per_category["one"] == pytest.approx(expected_ap)
    assert math.isnan(per_category["two"])


def test_area_ranges_use_the_average_visible_area():
    # One 200x200 track visible in 1 of 4 frames (average over visible frames: 40000 px -> medium;
    # averaged over all frames it would be 10000 px -> small).
    big = np.zeros((300, 300), bool)
    big[:200, :200] = True
    segs = [rle(big), None, None, None]
    gt = {
        "videos": [{"id": 1, "file_names": ["a", "b", "c", "d"], "height": 300, "width": 300}],
        "categories": [{"id": 1, "name": "one"}],
        "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": segs}],
    }
    metrics, _, _ = evaluate_ytvis(gt, [{"video_id": 1, "category_id": 1, "score": 1.0, "segmentations": segs}])
    assert metrics["APm"] == pytest.approx(100.0)
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["APl"])


def test_spatio_temporal_iou_against_naive_loops():
    rng = np.random.default_rng(0)
    video = {"id": 1, "file_names": list("abcde"), "height": 12, "width": 9}

    def random_track():
        masks = [rng.random((12, 9)) < 0.3 if rng.random() < 0.8 else None for _ in range(5)]
        return masks, _track({"video_id": 1, "segmentations": [rle(m) for m in masks]}, video, "test")

    dts = [random_track() for _ in range(4)]
    gts = [random_track() for _ in range(3)]
    iou = spatio_temporal_iou([d for _, d in dts], [g for _, g in gts])
    for i, (d_masks, _) in enumerate(dts):
        for j, (g_masks, _) in enumerate(gts):
            inter = union = 0
            for d, g in zip(d_masks, g_masks):
                d = np.zeros((12, 9), bool) if d is None else d
                g = np.zeros((12, 9), bool) if g is None else g
                inter += np.logical_and(d, g).sum()
                union += np.logical_or(d, g).sum()
            assert iou[i, j] == pytest.approx(inter / union if union else 0.0, abs=1e-12)


def test_evaluator_writes_codalab_results_and_metrics(tmp_path):
    gt, predictions = hand_case()
    json_file = str(tmp_path / "gt.json")
    with open(json_file, "w") as f:
        json.dump(gt, f)
    name = "ytvis_eval_hand_case"
    MetadataCatalog.get(name).set(json_file=json_file, thing_dataset_id_to_contiguous_id={1: 0, 2: 1})
    evaluator = YTVISEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    by_video = {1: [], 2: []}
    for p in predictions:
        by_video[p["video_id"]].append(p)
    for video_id, preds in by_video.items():
        masks = [torch.from_numpy(np.stack([mask_util.decode(s) if s else np.zeros((H, W), np.uint8) for s in p["segmentations"]]).astype(bool)) for p in preds]
        output = {
            "image_size": (H, W),
            "pred_scores": [p["score"] for p in preds],
            "pred_labels": [p["category_id"] - 1 for p in preds],
            "pred_masks": masks,
        }
        evaluator.process([{"video_id": video_id, "length": 3}], output)
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx((5 + 2 * 51 / 101) / 10 * 100)
    with open(tmp_path / "out" / "results.json") as f:
        written = json.load(f)
    assert len(written) == 4
    for entry, expected in zip(written, by_video[1] + by_video[2]):
        assert set(entry) == {"video_id", "category_id", "score", "segmentations"}
        assert entry["category_id"] == expected["category_id"] and entry["video_id"] == expected["video_id"]
        assert len(entry["segmentations"]) == 3
        for seg, expected_seg in zip(entry["segmentations"], expected["segmentations"]):
            decoded = mask_util.decode(seg)
            assert np.array_equal(decoded, mask_util.decode(expected_seg) if expected_seg else np.zeros((H, W), np.uint8))


def test_offline_tool_prints_metrics_and_per_category_ap(tmp_path, capsys):
    gt, predictions = hand_case()
    for name, content in (("gt.json", gt), ("results.json", predictions)):
        with open(tmp_path / name, "w") as f:
            json.dump(content, f)
    spec = importlib.util.spec_from_file_location("evaluate_ytvis", os.path.join(REPO, "tools", "evaluate_ytvis.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    status = tool.main([str(tmp_path / "gt.json"), str(tmp_path / "results.json"), "--output", str(tmp_path / "metrics.json")])
    assert status == 0
    printed = capsys.readouterr().out
    assert "AP 60.10" in printed and "AP50 100.00" in printed
    assert "one" in printed and "two" in printed and "n/a" in printed
    with open(tmp_path / "metrics.json") as f:
        saved = json.load(f)
    assert saved["AP"] == pytest.approx((5 + 2 * 51 / 101) / 10 * 100)
    assert saved["APl"] is None  # no large tracks: undefined, saved as null
    assert saved["per_category_AP"]["one"] == pytest.approx(saved["AP"])
