"""COCO instance AP (pycocotools' COCOeval) of COCOEvaluator and InstanceSegEvaluator, by hand.

COCO AP at one IoU threshold is the mean, over the 101 recall points 0, 0.01, ..., 1, of the best
precision reached at that recall or beyond (0 past the highest recall).
"""
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from mask2former.evaluation import COCOEvaluator, InstanceSegEvaluator
from mask2former.utils.detectron2_compat import MissingCompiledOpError, has_compiled_ops

SIZE = 20
CAT, DOG = 1, 2  # dataset category ids


def _box(rows, cols):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


GT = [  # (category, mask)
    (CAT, _box((0, 10), (0, 10))),
    (CAT, _box((10, 20), (10, 20))),
    (DOG, _box((0, 5), (15, 20))),
]


def _write_coco_json(path):
    annotations = []
    for ann_id, (category, mask) in enumerate(GT, start=1):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "id": ann_id,
                "image_id": 1,
                "category_id": category,
                "segmentation": rle,
                "area": float(mask.sum()),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg", "height": SIZE, "width": SIZE}],
                "annotations": annotations,
                "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
            }
        )
    )


@pytest.fixture
def register(tmp_path):
    names = []

    def _register(name, **metadata):
        json_file = tmp_path / f"{name}.json"
        _write_coco_json(json_file)
        record = {"file_name": str(tmp_path / "1.jpg"), "image_id": 1}
        record.update(height=SIZE, width=SIZE)
        DatasetCatalog.register(name, lambda: [record])
        MetadataCatalog.get(name).set(json_file=str(json_file), **metadata)
        names.append(name)
        return record

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _instances(detections):
    """Mask2Former's instance output: masks, scores, classes, and all-zero boxes."""
    instances = Instances((SIZE, SIZE))
    instances.pred_masks = torch.as_tensor(np.stack([mask for _, _, mask in detections]))
    instances.pred_boxes = Boxes(torch.zeros(len(detections), 4))
    instances.scores = torch.tensor([score for _, score, _ in detections])
    instances.pred_classes = torch.tensor([label for label, _, _ in detections])
    return {"instances": instances}


def _evaluate(evaluator, record, detections):
    evaluator.reset()
    evaluator.process([record], [_instances(detections)])
    return evaluator.evaluate()["segm"]


def _perfect(cat_label, dog_label):
    return [(cat_label, 0.9, GT[0][1]), (cat_label, 0.8, GT[1][1]), (dog_label, 0.7, GT[2][1])]


def _partial(cat_label, dog_label):
    second_cat = _box((10, 20), (9, 19))  # 90 px shared, 110 px union: IoU 0.818
    missed_dog = _box((15, 20), (0, 5))  # IoU 0 with the dog
    return [
        (cat_label, 0.9, GT[0][1]),
        (cat_label, 0.8, second_cat),
        (dog_label, 0.95, missed_dog),
        (dog_label, 0.6, GT[2][1]),
    ]


# cat: the second detection matches at IoU thresholds 0.50..0.80 (7 of 10): AP 1 there; at 0.85,
# 0.90, 0.95 only half the cats are found with precision 1: AP 51/101.
CAT_AP = (7 * 1 + 3 * 51 / 101) / 10
# dog: a false positive ranked first, then the dog: precision 1/2 at every recall, any threshold.
DOG_AP = 0.5


def test_coco_evaluator_uses_official_cocoeval_without_compiled_ops(register, tmp_path):
    register("test_evaluation_coco_fast_impl", thing_dataset_id_to_contiguous_id={CAT: 0, DOG: 1})
    evaluator = COCOEvaluator("test_evaluation_coco_fast_impl", output_dir=str(tmp_path))
    assert evaluator._use_fast_impl == has_compiled_ops()
    if not has_compiled_ops():
        with pytest.raises(MissingCompiledOpError, match="use_fast_impl"):
            COCOEvaluator("test_evaluation_coco_fast_impl", use_fast_impl=True)


@pytest.mark.parametrize("detections, expected", [(_perfect, (1.0, 1.0, 1.0)), (_partial, None)])
def test_coco_evaluator_segm_ap(register, tmp_path, detections, expected):
    name = "test_evaluation_coco_instances"
    record = register(
        name, thing_dataset_id_to_contiguous_id={CAT: 0, DOG: 1}, thing_classes=["cat", "dog"]
    )
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "out"), use_fast_impl=False)
    res = _evaluate(evaluator, record, detections(0, 1))
    if expected is None:
        expected = ((CAT_AP + DOG_AP) / 2, (1 + 0.5) / 2, (1 + 0.5) / 2)
        assert res["AP-cat"] == pytest.approx(100 * CAT_AP)
        assert res["AP-dog"] == pytest.approx(100 * DOG_AP)
    assert [res["AP"], res["AP50"], res["AP75"]] == pytest.approx([100 * v for v in expected])
    assert (tmp_path / "out" / "coco_instances_results.json").is_file()


def test_instance_seg_evaluator_maps_panoptic_contiguous_ids(register, tmp_path):
    # A panoptic dataset: contiguous ids run over things and stuff, "grass" (id 7) sits between
    # the cat and the dog; Detectron2's COCOEvaluator refuses such a mapping.
    name = "test_evaluation_instance_seg_panoptic"
    record = register(
        name,
        thing_dataset_id_to_contiguous_id={CAT: 0, DOG: 2},
        stuff_dataset_id_to_contiguous_id={CAT: 0, 7: 1, DOG: 2},
        thing_classes=["cat", "dog"],
        stuff_classes=["cat", "grass", "dog"],
    )
    # A stuff "instance" (contiguous id 1) over the whole image, with the top score: it matches no
    # instance annotation, so it must not change AP.
    detections = _partial(0, 2) + [(1, 0.99, np.ones((SIZE, SIZE), bool))]
    res = _evaluate(InstanceSegEvaluator(name, output_dir=str(tmp_path)), record, detections)
    assert res["AP"] == pytest.approx(100 * (CAT_AP + DOG_AP) / 2)
    assert res["AP50"] == pytest.approx(100 * (1 + 0.5) / 2)
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert sorted({r["category_id"] for r in results}) == [CAT, DOG]


def test_dataset_without_instance_annotations_is_a_clear_error():
    name = "test_evaluation_instance_no_json"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(json_file=None)
    try:
        with pytest.raises(ValueError, match=f"'{name}' was registered with json_file=None"):
            InstanceSegEvaluator(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
