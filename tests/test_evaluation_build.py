"""build_evaluator picks the evaluators upstream's train_net.py picks for each evaluator_type."""
import json

import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from mask2former.config import add_maskformer2_config
from mask2former.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    InstanceSegEvaluator,
    SemSegEvaluator,
    build_evaluator,
)

ALL_ON = dict(semantic=True, instance=True, panoptic=True)
ALL_OFF = dict(semantic=False, instance=False, panoptic=False)
PANOPTIC_ONLY = dict(semantic=False, instance=False, panoptic=True)

CASES = [
    ("sem_seg", ALL_OFF, [SemSegEvaluator]),
    ("coco", ALL_OFF, [COCOEvaluator]),
    ("coco_panoptic_seg", PANOPTIC_ONLY, [COCOPanopticEvaluator]),
    ("coco_panoptic_seg", ALL_ON, [COCOPanopticEvaluator, COCOEvaluator, SemSegEvaluator]),
    ("ade20k_panoptic_seg", ALL_OFF, [SemSegEvaluator]),  # semantic metrics always, as upstream
    ("ade20k_panoptic_seg", ALL_ON, [SemSegEvaluator, COCOPanopticEvaluator, InstanceSegEvaluator]),
    ("mapillary_vistas_panoptic_seg", PANOPTIC_ONLY, [COCOPanopticEvaluator]),
    (
        "mapillary_vistas_panoptic_seg",
        ALL_ON,
        [COCOPanopticEvaluator, InstanceSegEvaluator, SemSegEvaluator],
    ),
    ("cityscapes_sem_seg", ALL_ON, [CityscapesSemSegEvaluator]),
    ("cityscapes_instance", ALL_ON, [CityscapesInstanceEvaluator]),
    (
        "cityscapes_panoptic_seg",
        dict(semantic=False, instance=True, panoptic=False),
        [CityscapesInstanceEvaluator],
    ),
    (
        "cityscapes_panoptic_seg",
        ALL_ON,
        [COCOPanopticEvaluator, CityscapesSemSegEvaluator, CityscapesInstanceEvaluator],
    ),
]


@pytest.fixture
def register(tmp_path):
    json_file = tmp_path / "instances.json"
    json_file.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg", "height": 4, "width": 4}],
                "annotations": [],
                "categories": [{"id": 1, "name": "cat"}],
            }
        )
    )
    names = []

    def _register(evaluator_type):
        name = f"test_evaluation_build_{evaluator_type}_{len(names)}"
        record = {"file_name": "1.jpg", "sem_seg_file_name": "1.png", "image_id": 1}
        DatasetCatalog.register(name, lambda: [record])
        MetadataCatalog.get(name).set(
            evaluator_type=evaluator_type,
            json_file=str(json_file),
            thing_classes=["cat"],
            stuff_classes=["cat", "grass"],
            thing_dataset_id_to_contiguous_id={1: 0},
            stuff_dataset_id_to_contiguous_id={1: 0, 2: 1},
            ignore_label=255,
        )
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(tmp_path, semantic, instance, panoptic):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = semantic
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = instance
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic
    return cfg


@pytest.mark.parametrize("evaluator_type, flags, expected", CASES)
def test_evaluators_follow_upstream_selection(register, tmp_path, evaluator_type, flags, expected):
    evaluator = build_evaluator(_cfg(tmp_path, **flags), register(evaluator_type))
    evaluators = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    assert [type(e) for e in evaluators] == expected


def test_instance_ap_on_compiled_free_detectron2_uses_official_cocoeval(register, tmp_path):
    from mask2former.utils.detectron2_compat import has_compiled_ops

    evaluator = build_evaluator(_cfg(tmp_path, **ALL_OFF), register("coco"))
    assert evaluator._use_fast_impl == has_compiled_ops()


@pytest.mark.parametrize(
    "evaluator_type, flags",
    [
        ("coco_panoptic_seg", ALL_OFF),
        ("mapillary_vistas_panoptic_seg", ALL_OFF),
        ("no_such_type", ALL_ON),
    ],
)
def test_no_evaluator_is_not_implemented(register, tmp_path, evaluator_type, flags):
    with pytest.raises(NotImplementedError, match=evaluator_type):
        build_evaluator(_cfg(tmp_path, **flags), register(evaluator_type))


@pytest.mark.parametrize("evaluator_type", ["cityscapes_sem_seg", "cityscapes_panoptic_seg"])
def test_cityscapes_evaluators_refuse_several_machines(
    register, tmp_path, monkeypatch, evaluator_type
):
    from mask2former.evaluation import build as build_module

    # 2 machines x 2 processes: cityscapesscripts would not see the other machine's predictions.
    monkeypatch.setattr(build_module.comm, "get_world_size", lambda: 4)
    monkeypatch.setattr(build_module.comm, "get_local_size", lambda: 2)
    with pytest.raises(RuntimeError, match="one machine"):
        build_evaluator(_cfg(tmp_path, **ALL_ON), register(evaluator_type))
