"""SemSegEvaluator (Detectron2's metrics) on a tiny dataset whose scores are worked out by hand."""
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from mask2former.evaluation import SemSegEvaluator

IGNORE = 255
CLASSES = ["sky", "tree", "road"]

GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, IGNORE, IGNORE],
        [2, 2, 2, 2],
    ],
    dtype=np.uint8,
)
# One sky pixel wrong (a tree), one road pixel wrong (a tree); the ignored pixels are predicted
# anything and must not count.
PARTIAL = np.array(
    [
        [0, 0, 0, 1],
        [0, 0, 1, 1],
        [2, 1, 0, 2],
        [2, 2, 2, 2],
    ]
)


@pytest.fixture
def dataset(tmp_path):
    name = "test_evaluation_sem_seg_tiny"
    image_file = tmp_path / "a.jpg"
    gt_file = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image_file)
    Image.fromarray(GT).save(gt_file)
    record = {
        "file_name": str(image_file),
        "sem_seg_file_name": str(gt_file),
        "height": 4,
        "width": 4,
    }
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(
        stuff_classes=CLASSES, ignore_label=IGNORE, evaluator_type="sem_seg"
    )
    yield name, record
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _logits(label_map, num_classes=len(CLASSES)):
    labels = torch.as_tensor(label_map, dtype=torch.int64)
    one_hot = torch.nn.functional.one_hot(labels, num_classes)
    return one_hot.permute(2, 0, 1).float()


def _evaluate(name, record, label_map, output_dir=None):
    evaluator = SemSegEvaluator(name, distributed=False, output_dir=output_dir)
    evaluator.reset()
    evaluator.process([record], [{"sem_seg": _logits(label_map)}])
    return evaluator.evaluate()["sem_seg"]


def test_perfect_prediction_scores_100(dataset):
    name, record = dataset
    gt_without_ignore = np.where(GT == IGNORE, 0, GT)
    res = _evaluate(name, record, gt_without_ignore)
    for key in ["mIoU", "fwIoU", "mACC", "pACC"] + [f"IoU-{c}" for c in CLASSES]:
        assert res[key] == pytest.approx(100.0), key


def test_partial_prediction_matches_hand_computation(dataset, tmp_path):
    name, record = dataset
    res = _evaluate(name, record, PARTIAL, output_dir=str(tmp_path / "out"))
    # 14 labelled pixels. sky: 4 gt, 5 predicted (one tree pixel), 4 right -> IoU 4/5, acc 1.
    # tree: 4 gt, 4 predicted (one road pixel), 3 right -> IoU 3/5, acc 3/4.
    # road: 6 gt, 5 predicted, 5 right -> IoU 5/6, acc 5/6.
    ious = [4 / 5, 3 / 5, 5 / 6]
    accs = [1.0, 3 / 4, 5 / 6]
    gt_pixels = [4, 4, 6]
    assert res["mIoU"] == pytest.approx(100 * sum(ious) / 3)
    assert res["fwIoU"] == pytest.approx(100 * sum(n * iou for n, iou in zip(gt_pixels, ious)) / 14)
    assert res["mACC"] == pytest.approx(100 * sum(accs) / 3)
    assert res["pACC"] == pytest.approx(100 * 12 / 14)
    for class_name, iou, acc in zip(CLASSES, ious, accs):
        assert res[f"IoU-{class_name}"] == pytest.approx(100 * iou)
        assert res[f"ACC-{class_name}"] == pytest.approx(100 * acc)
    assert (tmp_path / "out" / "sem_seg_predictions.json").is_file()


def test_label_out_of_range_is_a_clear_error(dataset, tmp_path):
    name, record = dataset
    bad = GT.copy()
    bad[0, 0] = len(CLASSES)  # == num_classes: Detectron2 alone would count it silently
    Image.fromarray(bad).save(record["sem_seg_file_name"])
    with pytest.raises(ValueError, match=r"a\.png.*label values 3"):
        _evaluate(name, record, PARTIAL)


def test_size_mismatch_is_a_clear_error(dataset):
    name, record = dataset
    with pytest.raises(ValueError, match=r"a\.png.*size \(4, 4\) differs .* \(4, 5\)"):
        _evaluate(name, record, np.zeros((4, 5), np.int64))
