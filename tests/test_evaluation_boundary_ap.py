"""Boundary IoU and Boundary AP (tools/evaluate_coco_boundary_ap.py) against hand-worked values."""
import importlib.util
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from mask2former.evaluation.boundary_evaluation import boundary_iou, mask_to_boundary

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    path = os.path.join(REPO_ROOT, "tools", "evaluate_coco_boundary_ap.py")
    spec = importlib.util.spec_from_file_location("evaluate_coco_boundary_ap", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _square(size, top, left, side):
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


def test_boundary_is_a_band_of_width_d_inside_the_mask():
    # 100x100 image: d = round(0.02 * 141.4) = 3; a 20x20 square keeps a 14x14 interior.
    boundary = mask_to_boundary(_square(100, 40, 40, 20))
    assert boundary.sum() == 20 * 20 - 14 * 14
    assert boundary[40:43, 40:60].all() and not boundary[43:57, 43:57].any()
    # The image border counts as a contour: a full-image mask has a 3-pixel frame as boundary.
    assert mask_to_boundary(np.ones((100, 100), np.uint8)).sum() == 100 * 100 - 94 * 94
    # A tiny image still gets a 1-pixel boundary (d = round(0.28) = 0 is raised to 1).
    assert mask_to_boundary(_square(10, 2, 2, 6)).sum() == 36 - 16


def test_boundary_iou_of_a_shifted_square():
    gt = _square(20, 10, 10, 6)
    shifted = np.roll(gt, 1, axis=1)
    # Two 20-pixel rings; they share 5 pixels of the top row and 5 of the bottom row.
    assert boundary_iou(gt, shifted) == pytest.approx(10 / 30)
    assert boundary_iou(gt, gt) == 1.0


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def coco_files(tmp_path):
    gts = [_square(20, 2, 2, 6), _square(20, 10, 10, 6)]
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": _rle(mask),
            "area": float(mask.sum()),
            "bbox": [float(v) for v in mask_util.toBbox(_rle(mask))],
            "iscrowd": 0,
        }
        for i, mask in enumerate(gts)
    ]
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg", "height": 20, "width": 20}],
                "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )

    def write_detections(masks_and_scores):
        path = tmp_path / "dt.json"
        path.write_text(
            json.dumps(
                [
                    {
                        "image_id": 1,
                        "category_id": 1,
                        "segmentation": _rle(mask),
                        "score": score,
                        "bbox": [0, 0, 1, 1],  # dropped: areas must come from the masks
                    }
                    for mask, score in masks_and_scores
                ]
            )
        )
        return str(path)

    return str(gt_file), gts, write_detections


@pytest.mark.parametrize("iou_type", ["boundary", "segm"])
def test_perfect_detections_score_100(coco_files, iou_type):
    gt_file, gts, write_detections = coco_files
    dt_file = write_detections([(gts[0], 0.9), (gts[1], 0.8)])
    results = _load_tool().main(
        ["--gt-json-file", gt_file, "--dt-json-file", dt_file, "--iou-type", iou_type]
    )
    assert [results["AP"], results["AP50"], results["AP75"]] == pytest.approx([100.0] * 3)


def test_shifted_detection_fails_boundary_but_not_mask_matching(coco_files):
    gt_file, gts, write_detections = coco_files
    dt_file = write_detections([(gts[0], 0.9), (np.roll(gts[1], 1, axis=1), 0.8)])
    tool = _load_tool()
    boundary = tool.main(["--gt-json-file", gt_file, "--dt-json-file", dt_file])
    mask = tool.main(["--gt-json-file", gt_file, "--dt-json-file", dt_file, "--iou-type", "segm"])
    # Shifted square: mask IoU 30/42 = 0.714, Boundary IoU 1/3, so min(...) = 1/3 < 0.5: at every
    # threshold only the first object is found, with precision 1 up to recall 0.5: 51 of COCO's
    # 101 recall points -> AP 51/101.
    assert boundary["AP"] == pytest.approx(100 * 51 / 101)
    assert boundary["AP50"] == pytest.approx(100 * 51 / 101)
    # Mask AP: the shifted square matches at IoU thresholds 0.50..0.70 (5 of 10).
    assert mask["AP"] == pytest.approx(100 * (5 * 1 + 5 * 51 / 101) / 10)
    assert mask["AP50"] == pytest.approx(100.0)


def test_results_without_masks_are_a_clear_error(coco_files, tmp_path):
    gt_file, _, _ = coco_files
    dt_file = tmp_path / "boxes.json"
    box_only = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}
    dt_file.write_text(json.dumps([box_only]))
    with pytest.raises(ValueError, match="boxes.json.*no 'segmentation'"):
        _load_tool().main(["--gt-json-file", gt_file, "--dt-json-file", str(dt_file)])
