"""The built-in synthetic dataset: determinism, COCO(-panoptic) validity, registration."""
import hashlib
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detectron2.data import DatasetCatalog, MetadataCatalog

from mask2former.data import synthetic

SPLITS = {"train": 6, "val": 3}


def _digest(root):
    digest = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def _ids(png_path):
    rgb = np.asarray(Image.open(png_path)).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.generate(str(tmp_path_factory.mktemp("synthetic") / "synthetic"), seed=3, splits=SPLITS)


def test_same_seed_gives_identical_files_other_seed_differs(dataset, tmp_path):
    again = synthetic.generate(str(tmp_path / "again"), seed=3, splits=SPLITS)
    other = synthetic.generate(str(tmp_path / "other"), seed=4, splits=SPLITS)
    reference = _digest(dataset)
    assert len(reference) == 3 * sum(SPLITS.values()) + 4 + 1  # 3 files per image, 4 jsons, marker
    assert _digest(again) == reference
    other_digest = _digest(other)
    images = [k for k in reference if k.startswith("train" + os.sep)]
    assert all(other_digest[k] != reference[k] for k in images)


def test_panoptic_json_and_pngs_agree_and_score_100_with_panopticapi(dataset, tmp_path):
    from panopticapi.evaluation import pq_compute

    json_file = os.path.join(dataset, "annotations", "panoptic_val.json")
    with open(json_file) as f:
        content = json.load(f)
    assert [c["id"] for c in content["categories"]] == [c["id"] for c in synthetic.SYNTHETIC_CATEGORIES]
    assert len(content["images"]) == SPLITS["val"] == len(content["annotations"])
    for image, annotation in zip(content["images"], content["annotations"]):
        assert annotation["image_id"] == image["id"]
        ids = _ids(os.path.join(dataset, "panoptic_val", annotation["file_name"]))
        assert ids.shape == (image["height"], image["width"])
        assert Image.open(os.path.join(dataset, "val", image["file_name"])).size == (image["width"], image["height"])
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in annotation["segments_info"])
        assert 0 not in np.unique(ids)  # stuff covers every pixel the objects leave
        for segment in annotation["segments_info"]:
            assert segment["area"] == int((ids == segment["id"]).sum())
        things = [s for s in annotation["segments_info"] if s["category_id"] <= 4]
        assert 1 <= len(things) <= 5

    # GT scored against itself by the reference implementation: a valid panoptic dataset gives 100.
    result = pq_compute(json_file, json_file, os.path.join(dataset, "panoptic_val"), os.path.join(dataset, "panoptic_val"))
    assert result["All"]["pq"] == pytest.approx(1.0)
    assert result["Things"]["n"] == 4 and result["Stuff"]["n"] > 0


def test_semantic_pngs_and_instance_json_are_derived_from_the_panoptic_pngs(dataset):
    with open(os.path.join(dataset, "annotations", "panoptic_train.json")) as f:
        panoptic = json.load(f)
    contiguous = {c["id"]: i for i, c in enumerate(panoptic["categories"])}
    coco = COCO(os.path.join(dataset, "annotations", "instances_train.json"))
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    for annotation in panoptic["annotations"]:
        ids = _ids(os.path.join(dataset, "panoptic_train", annotation["file_name"]))
        expected = np.full(ids.shape, 255, dtype=np.int64)
        for segment in annotation["segments_info"]:
            expected[ids == segment["id"]] = contiguous[segment["category_id"]]
        semantic = np.asarray(Image.open(os.path.join(dataset, "panoptic_semseg_train", annotation["file_name"])))
        np.testing.assert_array_equal(semantic, expected)

        things = sorted(
            (s["category_id"], (ids == s["id"]).sum()) for s in annotation["segments_info"] if s["category_id"] <= 4
        )
        instances = coco.loadAnns(coco.getAnnIds(imgIds=[annotation["image_id"]]))
        assert sorted((a["category_id"], coco.annToMask(a).sum()) for a in instances) == things
        for instance in instances:
            mask = coco.annToMask(instance).astype(bool)
            segment_ids = np.unique(ids[mask])
            assert len(segment_ids) == 1 and segment_ids[0] // 1000 == instance["category_id"]
            np.testing.assert_allclose(instance["bbox"], mask_util.toBbox(mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))))


def test_thing_class_is_readable_from_colour(dataset):
    """The design promise: a thing's class follows from its colour (nearest class colour)."""
    with open(os.path.join(dataset, "annotations", "panoptic_train.json")) as f:
        panoptic = json.load(f)
    things = [c for c in synthetic.SYNTHETIC_CATEGORIES if c["isthing"]]
    palette = np.array([c["color"] for c in things], dtype=np.float64)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    checked = 0
    for image, annotation in zip(panoptic["images"], panoptic["annotations"]):
        rgb = np.asarray(Image.open(os.path.join(dataset, "train", image["file_name"]))).astype(np.float64)
        ids = _ids(os.path.join(dataset, "panoptic_train", annotation["file_name"]))
        for segment in annotation["segments_info"]:
            if segment["category_id"] > 4:
                continue
            colour = np.median(rgb[ids == segment["id"]], axis=0)
            predicted = things[int(np.argmax(palette @ (colour / np.linalg.norm(colour))))]["id"]
            assert predicted == segment["category_id"]
            checked += 1
    assert checked >= SPLITS["train"]


def test_registration_generates_on_first_load_and_sets_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_SPLITS", {"train": 2, "val": 2})
    root = str(tmp_path / "synthetic")
    names = synthetic.register_synthetic(root, prefix="test_synth_reg")
    try:
        assert not os.path.exists(root)  # registering reads nothing
        records = DatasetCatalog.get("test_synth_reg_panoptic_val")
        assert os.path.isfile(os.path.join(root, "annotations", "panoptic_val.json"))
        assert len(records) == 2
        record = records[0]
        for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
            assert os.path.isfile(record[key])
        assert (record["height"], record["width"]) == (synthetic.DEFAULT_HEIGHT, synthetic.DEFAULT_WIDTH)
        meta = MetadataCatalog.get("test_synth_reg_panoptic_val")
        assert meta.evaluator_type == "coco_panoptic_seg"
        assert meta.thing_classes == ["disc", "box", "triangle", "star"]
        assert meta.stuff_classes == ["disc", "box", "triangle", "star", "sky", "grass", "brick", "water"]
        assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
        assert meta.stuff_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 11: 4, 12: 5, 13: 6, 14: 7}
        assert (meta.ignore_label, meta.label_divisor) == (255, 1000)
        assert os.path.isdir(meta.sem_seg_root) and os.path.isfile(meta.json_file)
        # records carry contiguous ids and the thing flag
        for segment in record["segments_info"]:
            assert segment["isthing"] == (segment["category_id"] < 4)

        assert MetadataCatalog.get("test_synth_reg_sem_seg_train").evaluator_type == "sem_seg"
        semantic = DatasetCatalog.get("test_synth_reg_sem_seg_train")
        assert len(semantic) == 2 and all(os.path.isfile(r["sem_seg_file_name"]) for r in semantic)
        assert MetadataCatalog.get("test_synth_reg_instance_train").evaluator_type == "coco"
        instances = DatasetCatalog.get("test_synth_reg_instance_train")
        assert all(0 <= a["category_id"] < 4 for r in instances for a in r["annotations"])
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_fixed_names_are_registered_on_import():
    import mask2former.data  # noqa: F401

    for kind, evaluator in (("panoptic", "coco_panoptic_seg"), ("sem_seg", "sem_seg"), ("instance", "coco")):
        for split in ("train", "val"):
            name = f"synthetic_{kind}_{split}"
            assert name in DatasetCatalog.list()
            assert MetadataCatalog.get(name).evaluator_type == evaluator


def test_incomplete_folder_is_not_mistaken_for_a_dataset(tmp_path):
    root = tmp_path / "synthetic"
    root.mkdir()
    (root / "stray.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="not a complete synthetic dataset"):
        synthetic.ensure_generated(str(root))


def test_concurrent_first_loads_leave_one_complete_dataset(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(synthetic, "DEFAULT_SPLITS", {"train": 4, "val": 2})
    root = str(tmp_path / "synthetic")
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: synthetic.ensure_generated(root), range(3)))
    assert results == [root] * 3
    assert sorted(os.listdir(tmp_path)) == ["synthetic"]  # no staging folder left behind
    reference = synthetic.generate(str(tmp_path / "reference"), seed=synthetic.DEFAULT_SEED)
    assert _digest(root) == _digest(reference)


def test_preview_grid_shows_images_above_their_annotations(dataset, tmp_path):
    path = synthetic.write_preview(dataset, str(tmp_path / "preview.png"), split="train", num_images=4)
    grid = np.asarray(Image.open(path))
    h, w = synthetic.DEFAULT_HEIGHT, synthetic.DEFAULT_WIDTH
    assert grid.shape == (2 * 2 * h, 2 * 4 * w, 3)  # 2 rows, 4 columns, drawn at twice the size
    first_image = np.asarray(Image.open(os.path.join(dataset, "train", "000001.jpg")))
    np.testing.assert_array_equal(grid[0 : 2 * h : 2, 0 : 2 * w : 2], first_image)
