"""The evaluators build_evaluator picks for the built-in synthetic panoptic dataset, run on
predictions made from its ground truth: a perfect prediction scores 100 everywhere, and leaving out
one thing class costs exactly that class in PQ and AP."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from panopticapi.utils import rgb2id

from mask2former.config import add_maskformer2_config
from mask2former.data.synthetic import generate, register_synthetic
from mask2former.evaluation import build_evaluator

PREFIX = "test_evaluation_synthetic"
DATASET = f"{PREFIX}_panoptic_val"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "synthetic")
    generate(root, splits={"val": 4})
    names = register_synthetic(root, prefix=PREFIX, splits=("val",))
    yield DatasetCatalog.get(DATASET)
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _outputs_from_ground_truth(record, num_classes, left_out_class=None):
    segments = rgb2id(np.array(Image.open(record["pan_seg_file_name"]), dtype=np.uint32))
    kept = [s for s in record["segments_info"] if s["category_id"] != left_out_class]
    for segment in record["segments_info"]:
        if segment["category_id"] == left_out_class:
            segments[segments == segment["id"]] = 0  # no prediction there
    segments_info = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]} for s in kept
    ]
    things = [s for s in kept if s["isthing"]]
    instances = Instances((record["height"], record["width"]))
    instances.pred_masks = torch.as_tensor(np.stack([segments == s["id"] for s in things]))
    instances.pred_boxes = Boxes(torch.zeros(len(things), 4))
    instances.scores = torch.ones(len(things))
    instances.pred_classes = torch.tensor([s["category_id"] for s in things])

    semantic = np.array(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
    semantic[semantic >= num_classes] = 0  # ignored pixels: any class will do
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(semantic), num_classes)
    return {
        "panoptic_seg": (torch.as_tensor(segments.astype(np.int32)), segments_info),
        "instances": instances,
        "sem_seg": one_hot.permute(2, 0, 1).float(),
    }


def _evaluate(records, tmp_path, left_out_class=None):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    evaluator = build_evaluator(cfg, DATASET, str(tmp_path))
    num_classes = len(MetadataCatalog.get(DATASET).stuff_classes)
    evaluator.reset()
    for record in records:
        outputs = _outputs_from_ground_truth(record, num_classes, left_out_class)
        evaluator.process([record], [outputs])
    return evaluator.evaluate()


def test_perfect_predictions_score_100(records, tmp_path):
    results = _evaluate(records, tmp_path)
    for key in ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"]:
        assert results["panoptic_seg"][key] == pytest.approx(100.0), key
    for key in ["AP", "AP50", "AP75"]:
        assert results["segm"][key] == pytest.approx(100.0), key
    for key in ["mIoU", "fwIoU", "mACC", "pACC"]:
        assert results["sem_seg"][key] == pytest.approx(100.0), key
    assert os.path.isfile(tmp_path / "coco_instances_results.json")


def test_leaving_out_one_thing_class_costs_that_class(records, tmp_path):
    metadata = MetadataCatalog.get(DATASET)
    present = sorted(
        {s["category_id"] for r in records for s in r["segments_info"] if s["isthing"]}
    )
    assert len(present) >= 2, "the synthetic val split should show several thing classes"
    left_out = present[0]
    results = _evaluate(records, tmp_path, left_out_class=left_out)
    # The left-out class has only false negatives (PQ 0, AP 0); every other class is perfect.
    things = len(present)
    stuff = len({s["category_id"] for r in records for s in r["segments_info"] if not s["isthing"]})
    assert results["panoptic_seg"]["PQ_th"] == pytest.approx(100 * (things - 1) / things)
    assert results["panoptic_seg"]["PQ_st"] == pytest.approx(100.0)
    classes = things + stuff
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100 * (classes - 1) / classes)
    assert results["segm"]["AP"] == pytest.approx(100 * (things - 1) / things)
    assert results["segm"][f"AP-{metadata.thing_classes[left_out]}"] == pytest.approx(0.0)
