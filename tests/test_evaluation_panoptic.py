"""COCO panoptic PQ/SQ/RQ through panopticapi on a tiny dataset scored by hand."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator as D2COCOPanopticEvaluator
from panopticapi.utils import id2rgb

from mask2former.evaluation import COCOPanopticEvaluator, pq_from_files

PERSON, CAR, GRASS = 1, 3, 5  # dataset category ids
CATEGORIES = [
    {"id": PERSON, "name": "person", "isthing": 1},
    {"id": CAR, "name": "car", "isthing": 1},
    {"id": GRASS, "name": "grass", "isthing": 0},
]
THING_TO_CONTIGUOUS = {PERSON: 0, CAR: 1}
THINGS = set(THING_TO_CONTIGUOUS)
# Mask2Former's convention: the stuff mapping covers every category.
STUFF_TO_CONTIGUOUS = {PERSON: 0, CAR: 1, GRASS: 2}


def _gt_segments():
    """10x10 image: grass everywhere, two people, a car and a 2-pixel void region."""
    segments = np.full((10, 10), 4, np.int32)  # grass, segment id 4
    segments[0:4, 0:4] = 1  # person A, 16 px
    segments[5:10, 5:10] = 2  # person B, 25 px
    segments[0:2, 6:10] = 3  # car, 8 px
    segments[9, 0:2] = 0  # void
    info = [
        {"id": 1, "category_id": PERSON, "iscrowd": 0, "area": 16},
        {"id": 2, "category_id": PERSON, "iscrowd": 0, "area": 25},
        {"id": 3, "category_id": CAR, "iscrowd": 0, "area": 8},
        {"id": 4, "category_id": GRASS, "iscrowd": 0, "area": 49},
    ]
    return segments, info


def _register(tmp_path, name, categories, segments, info):
    gt_root = tmp_path / "panoptic_val"
    gt_root.mkdir()
    Image.fromarray(id2rgb(segments)).save(gt_root / "000001.png")
    gt_json = tmp_path / "panoptic_val.json"
    gt_json.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "000001.jpg", "height": 10, "width": 10}],
                "annotations": [{"image_id": 1, "file_name": "000001.png", "segments_info": info}],
                "categories": categories,
            }
        )
    )
    record = {"file_name": str(tmp_path / "000001.jpg"), "image_id": 1, "height": 10, "width": 10}
    DatasetCatalog.register(name, lambda: [record])
    ids = {c["id"] for c in categories}
    MetadataCatalog.get(name).set(
        panoptic_json=str(gt_json),
        panoptic_root=str(gt_root),
        thing_dataset_id_to_contiguous_id={k: THING_TO_CONTIGUOUS[k] for k in ids & THINGS},
        stuff_dataset_id_to_contiguous_id={k: STUFF_TO_CONTIGUOUS[k] for k in ids},
        evaluator_type="coco_panoptic_seg",
    )
    return record


@pytest.fixture
def dataset(tmp_path):
    name = "test_evaluation_panoptic_tiny"
    segments, info = _gt_segments()
    record = _register(tmp_path, name, CATEGORIES, segments, info)
    yield name, record
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _model_output(segments, info):
    """Mask2Former's panoptic output: segment ids and segments_info with contiguous ids."""
    segments_info = []
    for segment in info:
        isthing = segment["category_id"] in THING_TO_CONTIGUOUS
        mapping = THING_TO_CONTIGUOUS if isthing else STUFF_TO_CONTIGUOUS
        category_id = mapping[segment["category_id"]]
        segments_info.append({"id": segment["id"], "category_id": category_id, "isthing": isthing})
    return {"panoptic_seg": (torch.as_tensor(segments, dtype=torch.int32), segments_info)}


def _evaluate(evaluator_class, name, record, output, output_dir=None):
    evaluator = evaluator_class(name, output_dir)
    evaluator.reset()
    evaluator.process([record], [output])
    return evaluator.evaluate()["panoptic_seg"]


@pytest.mark.parametrize("evaluator_class", [COCOPanopticEvaluator, D2COCOPanopticEvaluator])
def test_perfect_prediction_scores_100(dataset, evaluator_class, tmp_path):
    name, record = dataset
    segments, info = _gt_segments()
    segments = np.where(segments == 0, 4, segments)  # the void pixels may be predicted anything
    output = _model_output(segments, info)
    res = _evaluate(evaluator_class, name, record, output, str(tmp_path / "out"))
    for key in ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]:
        assert res[key] == pytest.approx(100.0), key
    assert (tmp_path / "out" / "predictions.json").is_file()


def _partial_prediction():
    pred = np.full((10, 10), 4, np.int32)  # grass, also over the void pixels
    pred[0:4, 0:3] = 1  # person A loses a column: IoU 12/16
    pred[5:10, 6:10] = 2  # person B loses a column: IoU 20/25
    pred[4, 6:10] = 3  # car in the wrong place: one FN and one FP
    info = [
        {"id": 1, "category_id": PERSON},
        {"id": 2, "category_id": PERSON},
        {"id": 3, "category_id": CAR},
        {"id": 4, "category_id": GRASS},
    ]
    return pred, info


# grass: predicted on 64 px, 2 of them void; 45 of the 49 gt grass px are predicted grass (4 went
# to the car): IoU = 45 / (64 + 49 - 45 - 2) = 45/66.
PERSON_PQ = (12 / 16 + 20 / 25) / 2  # 2 TP, SQ = mean IoU, RQ = 1
GRASS_PQ = 45 / 66
CAR_PQ = 0.0  # TP 0, FP 1, FN 1: RQ = 0


@pytest.mark.parametrize("evaluator_class", [COCOPanopticEvaluator, D2COCOPanopticEvaluator])
def test_partial_prediction_matches_hand_computation(dataset, evaluator_class):
    name, record = dataset
    res = _evaluate(evaluator_class, name, record, _model_output(*_partial_prediction()))
    person_pq, grass_pq, car_pq = PERSON_PQ, GRASS_PQ, CAR_PQ
    assert res["PQ"] == pytest.approx(100 * (person_pq + car_pq + grass_pq) / 3)
    assert res["SQ"] == pytest.approx(100 * (person_pq + 0.0 + grass_pq) / 3)
    assert res["RQ"] == pytest.approx(100 * (1 + 0 + 1) / 3)
    assert res["PQ_th"] == pytest.approx(100 * person_pq / 2)
    assert res["RQ_th"] == pytest.approx(100 * 1 / 2)
    assert res["PQ_st"] == pytest.approx(100 * grass_pq)
    assert res["RQ_st"] == pytest.approx(100.0)


def test_dataset_without_stuff_reports_things_only(tmp_path):
    name = "test_evaluation_panoptic_things_only"
    segments = np.zeros((10, 10), np.int32)
    segments[0:4, 0:4] = 1
    segments[5:10, 5:10] = 2
    info = [
        {"id": 1, "category_id": PERSON, "iscrowd": 0, "area": 16},
        {"id": 2, "category_id": CAR, "iscrowd": 0, "area": 25},
    ]
    record = _register(tmp_path, name, CATEGORIES[:2], segments, info)
    try:
        pred = segments.copy()
        pred[5:10, 5] = 0  # the car loses a column: IoU 20/25
        res = _evaluate(COCOPanopticEvaluator, name, record, _model_output(pred, info))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert res["PQ"] == pytest.approx(100 * (1 + 20 / 25) / 2)
    assert res["PQ_th"] == pytest.approx(res["PQ"])
    assert "PQ_st" not in res


def test_worker_processes_add_up_like_one(tmp_path):
    # Two copies of the partial example, one per worker process: every count doubles, so the
    # scores are those of one copy.
    segments, gt_info = _gt_segments()
    pred, pred_info = _partial_prediction()
    for kind, label_map in (("gt", segments), ("pred", pred)):
        (tmp_path / kind).mkdir()
        for image_id in (1, 2):
            Image.fromarray(id2rgb(label_map)).save(tmp_path / kind / f"{image_id}.png")
    for kind, info in (("gt", gt_info), ("pred", pred_info)):
        annotations = [
            {"image_id": i, "file_name": f"{i}.png", "segments_info": info} for i in (1, 2)
        ]
        (tmp_path / f"{kind}.json").write_text(
            json.dumps({"annotations": annotations, "categories": CATEGORIES})
        )
    res = pq_from_files(
        str(tmp_path / "gt.json"),
        str(tmp_path / "pred.json"),
        str(tmp_path / "gt"),
        str(tmp_path / "pred"),
        num_workers=2,
    )
    assert res["All"]["pq"] == pytest.approx((PERSON_PQ + CAR_PQ + GRASS_PQ) / 3)
    assert res["All"]["n"] == 3
    assert res["Stuff"]["pq"] == pytest.approx(GRASS_PQ)
