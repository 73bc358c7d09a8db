"""PQ of semantic predictions (tools/evaluate_pq_for_semantic_segmentation.py), scored by hand.

Predictions go through SemSegEvaluator, which writes the sem_seg_predictions.json the tool reads.
"""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from mask2former.evaluation import SemSegEvaluator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORE = 255
NAME = "test_evaluation_semantic_pq_tiny"

GT_A = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE, IGNORE], [2, 2, 2, 2]], np.uint8)
GT_B = np.array([[0, 0, 2, 2]] * 4, np.uint8)
PRED_A = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [2, 1, 0, 2], [2, 2, 2, 2]])
PRED_B = np.array([[0, 1, 2, 2], [0, 1, 2, 2], [0, 1, 2, 2], [1, 1, 2, 2]])


def _load_tool():
    path = os.path.join(REPO_ROOT, "tools", "evaluate_pq_for_semantic_segmentation.py")
    spec = importlib.util.spec_from_file_location("evaluate_pq_for_semantic_segmentation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def records(tmp_path):
    records = []
    for key, gt in (("a", GT_A), ("b", GT_B)):
        Image.fromarray(gt).save(tmp_path / f"{key}.png")
        image_file, gt_file = tmp_path / f"{key}.jpg", tmp_path / f"{key}.png"
        records.append({"file_name": str(image_file), "sem_seg_file_name": str(gt_file)})
    DatasetCatalog.register(NAME, lambda: records)
    # Dataset ids differ from contiguous ids, as for COCO-Stuff: the json holds dataset ids.
    MetadataCatalog.get(NAME).set(
        stuff_classes=["wall", "floor", "sky"],
        stuff_dataset_id_to_contiguous_id={10: 0, 20: 1, 30: 2},
        ignore_label=IGNORE,
    )
    yield records
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _predictions_json(records, preds, folder):
    evaluator = SemSegEvaluator(NAME, distributed=False, output_dir=str(folder))
    evaluator.reset()
    for record, pred in zip(records, preds):
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.int64), 3)
        evaluator.process([record], [{"sem_seg": one_hot.permute(2, 0, 1).float()}])
    evaluator.evaluate()
    return str(folder / "sem_seg_predictions.json")


def test_perfect_prediction_scores_100(records, tmp_path):
    perfect = [np.where(GT_A == IGNORE, 0, GT_A), GT_B]
    json_file = _predictions_json(records, perfect, tmp_path)
    results = _load_tool().main(["--dataset-name", NAME, "--json-file", json_file])
    scores = [results["PQ"], results["SQ"], results["RQ"], results["mIoU"]]
    assert scores == pytest.approx([100.0] * 4)
    assert results["n"] == 3


def test_partial_prediction_matches_hand_computation(records, tmp_path):
    json_file = _predictions_json(records, [PRED_A, PRED_B], tmp_path)
    results = _load_tool().main(["--dataset-name", NAME, "--json-file", json_file])
    # Image a (2 void pixels, left out of every union): wall IoU 4/(6+4-4-1) = 0.8, floor
    # 3/(4+4-3) = 0.6, sky 5/(6+6-5-1) = 5/6: three matches.
    # Image b: wall 3/8 = 0.375 < 0.5: one FN and one FP; floor has no ground truth: one FP;
    # sky 1.
    wall = {"tp_iou": 0.8, "tp": 1, "fp": 1, "fn": 1}
    floor = {"tp_iou": 0.6, "tp": 1, "fp": 1, "fn": 0}
    sky = {"tp_iou": 5 / 6 + 1, "tp": 2, "fp": 0, "fn": 0}
    pq, sq, rq = [], [], []
    for c in (wall, floor, sky):
        denominator = c["tp"] + 0.5 * c["fp"] + 0.5 * c["fn"]
        pq.append(c["tp_iou"] / denominator)
        sq.append(c["tp_iou"] / c["tp"])
        rq.append(c["tp"] / denominator)
    assert results["PQ"] == pytest.approx(100 * np.mean(pq))
    assert results["SQ"] == pytest.approx(100 * np.mean(sq))
    assert results["RQ"] == pytest.approx(100 * np.mean(rq))
    assert results["per_class"]["wall"]["PQ"] == pytest.approx(100 * 0.8 / 2)
    # mIoU over both images: wall 7/(12+8-7), floor 3/(4+9-3), sky 13/(14+13-13).
    assert results["mIoU"] == pytest.approx(100 * (7 / 13 + 3 / 10 + 13 / 14) / 3)


def test_unknown_category_is_a_clear_error(records, tmp_path):
    path = _predictions_json(records, [PRED_A, PRED_B], tmp_path)
    predictions = json.loads(open(path).read())
    predictions[0]["category_id"] = 99
    with open(path, "w") as f:
        json.dump(predictions, f)
    with pytest.raises(ValueError, match="category_id 99"):
        _load_tool().main(["--dataset-name", NAME, "--json-file", path])
