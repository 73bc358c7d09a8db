"""Cityscapes semantic and instance evaluation through cityscapesscripts, scored by hand."""
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from mask2former.evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

H, W = 32, 64
# Cityscapes label ids and train ids.
UNLABELED, ROAD, SIDEWALK, PERSON, CAR = 0, 7, 8, 24, 26
TRAIN_ID = {ROAD: 0, SIDEWALK: 1, PERSON: 11, CAR: 13}
THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
BASENAME = "frankfurt_000000_000001"


def _region(rows, cols):
    mask = np.zeros((H, W), bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


CAR_GT = _region((4, 16), (10, 30))  # 240 px
PERSON_GT = _region((20, 30), (40, 52))  # 120 px


def _ground_truth():
    labels = np.full((H, W), SIDEWALK, np.uint8)
    labels[16:] = ROAD
    labels[:2] = UNLABELED  # not evaluated
    labels[CAR_GT] = CAR
    labels[PERSON_GT] = PERSON
    instances = labels.astype(np.uint16)
    instances[CAR_GT] = CAR * 1000
    instances[PERSON_GT] = PERSON * 1000
    return labels, instances


@pytest.fixture
def dataset(tmp_path):
    name = "test_evaluation_cityscapes_tiny"
    city_dir = tmp_path / "gtFine" / "val" / "frankfurt"
    city_dir.mkdir(parents=True)
    labels, instances = _ground_truth()
    Image.fromarray(labels).save(city_dir / f"{BASENAME}_gtFine_labelIds.png")
    Image.fromarray(instances).save(city_dir / f"{BASENAME}_gtFine_instanceIds.png")
    record = {
        "file_name": str(tmp_path / f"{BASENAME}_leftImg8bit.png"),
        "image_id": BASENAME,
        "height": H,
        "width": W,
    }
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(
        gt_dir=str(tmp_path / "gtFine" / "val"), thing_classes=THING_CLASSES
    )
    yield name, record
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _sem_seg_output(label_ids):
    train_ids = np.zeros((H, W), np.int64)
    for label_id, train_id in TRAIN_ID.items():
        train_ids[label_ids == label_id] = train_id
    logits = torch.nn.functional.one_hot(torch.as_tensor(train_ids), 19).permute(2, 0, 1).float()
    return {"sem_seg": logits}


def _evaluate(evaluator, record, output):
    evaluator.reset()
    evaluator.process([record], [output])
    return evaluator.evaluate()


def test_semantic_perfect_prediction_scores_100(dataset):
    name, record = dataset
    labels, _ = _ground_truth()
    res = _evaluate(CityscapesSemSegEvaluator(name), record, _sem_seg_output(labels))["sem_seg"]
    assert [res["IoU"], res["iIoU"], res["IoU_sup"], res["iIoU_sup"]] == pytest.approx([100.0] * 4)


def test_semantic_partial_prediction_matches_hand_computation(dataset):
    name, record = dataset
    labels, _ = _ground_truth()
    pred = labels.copy()
    pred[:2] = SIDEWALK  # unlabeled pixels: not evaluated
    pred[4:16, 25:30] = SIDEWALK  # 60 car pixels lost to the sidewalk
    pred[16, 0:32] = SIDEWALK  # 32 road pixels lost to the sidewalk
    res = _evaluate(CityscapesSemSegEvaluator(name), record, _sem_seg_output(pred))["sem_seg"]
    # sidewalk: 14 rows x 64 - 240 car = 656 gt px, all found, 92 false positives -> 656/748;
    # car 180/240; road: 16 rows x 64 - 120 person = 904 gt px, 32 lost -> 872/904; person 1.
    class_ious = [656 / 748, 180 / 240, 872 / 904, 1.0]
    assert res["IoU"] == pytest.approx(100 * sum(class_ious) / 4)
    # categories: flat (road + sidewalk, 1560 px) also gets the 60 car pixels: 1560/1620;
    # vehicle 180/240; human 1.
    assert res["IoU_sup"] == pytest.approx(100 * (1560 / 1620 + 180 / 240 + 1.0) / 3)
    # Instance-weighted IoU: with no false positives the weights cancel: car 0.75, person 1.
    assert res["iIoU"] == pytest.approx(100 * (0.75 + 1.0) / 2)


def _instance_output(detections):
    instances = Instances((H, W))
    instances.pred_masks = torch.as_tensor(np.stack([mask for _, _, mask in detections]))
    instances.pred_boxes = Boxes(torch.zeros(len(detections), 4))
    instances.scores = torch.tensor([score for _, score, _ in detections])
    instances.pred_classes = torch.tensor([THING_CLASSES.index(name) for name, _, _ in detections])
    return {"instances": instances}


def test_instance_perfect_prediction_scores_100(dataset):
    name, record = dataset
    output = _instance_output([("car", 0.9, CAR_GT), ("person", 0.8, PERSON_GT)])
    res = _evaluate(CityscapesInstanceEvaluator(name), record, output)["segm"]
    assert [res["AP"], res["AP50"]] == pytest.approx([100.0, 100.0])


def test_instance_partial_prediction_matches_hand_computation(dataset):
    name, record = dataset
    shifted_person = _region((20, 30), (41, 53))  # 110 px shared, 130 px union: overlap 0.846
    output = _instance_output([("car", 0.9, CAR_GT), ("person", 0.8, shifted_person)])
    res = _evaluate(CityscapesInstanceEvaluator(name), record, output)["segm"]
    # The person matches at overlaps 0.50..0.80 (7 of 10 thresholds, AP 1 each) and is a false
    # positive beside a missed person above (AP 0); the car is found at every threshold.
    assert res["AP"] == pytest.approx(100 * (7 / 10 + 1.0) / 2)
    assert res["AP50"] == pytest.approx(100.0)


def test_ground_truth_without_prediction_is_an_error_not_an_exit(dataset, tmp_path):
    name, record = dataset
    labels, _ = _ground_truth()
    city_dir = tmp_path / "gtFine" / "val" / "frankfurt"
    Image.fromarray(labels).save(city_dir / "frankfurt_000000_000002_gtFine_labelIds.png")
    with pytest.raises(RuntimeError, match="needs a prediction"):
        _evaluate(CityscapesSemSegEvaluator(name), record, _sem_seg_output(labels))
