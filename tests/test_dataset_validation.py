"""Dataset validation: each kind of broken dataset gives one error listing the offending files,
and a dataset that fails is not registered."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.projects.deeplab import add_deeplab_config

from mask2former import add_maskformer2_config
from mask2former.data import custom, synthetic
from mask2former.data.validation import (
    DatasetValidationError,
    ValidationReport,
    check_num_classes,
    validate_dataset_dicts,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sem_seg_dataset(root, num_images=3, h=6, w=8):
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    for i in range(num_images):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / f"{i:03d}.jpg")
        labels = np.zeros((h, w), np.uint8)
        labels[0, 0] = 255  # the ignore label is always fine
        labels[1:, 4:] = 2
        Image.fromarray(labels).save(root / "masks" / f"{i:03d}.png")
    (root / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    return f"type=sem_seg,image_root={root / 'images'},sem_seg_root={root / 'masks'},classes={root / 'classes.json'}"


def _register_fails(spec_text, *messages):
    """Registering must raise one error that contains every message, and register nothing."""
    name = custom.parse_dataset_spec(spec_text)["name"]
    with pytest.raises(DatasetValidationError) as error:
        custom.register_custom_dataset(spec_text)
    for message in messages:
        assert message in str(error.value), str(error.value)
    assert name not in DatasetCatalog.list()
    assert name not in custom._registered_specs
    return str(error.value)


def test_a_valid_dataset_passes(tmp_path):
    spec = "name=valid_check," + _sem_seg_dataset(tmp_path)
    assert custom.validate_custom_dataset(spec) == 3
    assert "valid_check" not in DatasetCatalog.list()  # checking registers nothing


def test_images_without_masks_are_listed(tmp_path):
    spec = "name=no_masks," + _sem_seg_dataset(tmp_path)
    os.remove(tmp_path / "masks" / "001.png")
    os.remove(tmp_path / "masks" / "002.png")
    message = _register_fails(spec, "2 problem(s) in 2 file(s)", "001.jpg: image has no mask", "002.jpg: image has no mask")
    assert message.startswith("Dataset 'no_masks' failed validation")


def test_mask_of_another_size_than_its_image(tmp_path):
    spec = "name=bad_size," + _sem_seg_dataset(tmp_path)
    Image.fromarray(np.zeros((6, 9), np.uint8)).save(tmp_path / "masks" / "001.png")
    _register_fails(spec, "001.png: mask is 6x9 (HxW) but its image", "001.jpg is 6x8")


def test_label_values_beyond_the_classes_that_are_not_ignore(tmp_path):
    spec = "name=bad_labels," + _sem_seg_dataset(tmp_path)
    labels = np.zeros((6, 8), np.uint8)
    labels[0, :3] = [3, 7, 255]
    Image.fromarray(labels).save(tmp_path / "masks" / "002.png")
    _register_fails(spec, "002.png: label value(s) 3, 7 are >= the number of classes (3)", "ignore label (255)")


def test_rgb_mask_is_refused(tmp_path):
    spec = "name=rgb_mask," + _sem_seg_dataset(tmp_path)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "masks" / "000.png")
    _register_fails(spec, "000.png: mask has mode RGB; expected a single-channel PNG")


def test_corrupt_and_truncated_files(tmp_path):
    spec = "name=corrupt," + _sem_seg_dataset(tmp_path, h=64, w=64)
    (tmp_path / "images" / "000.jpg").write_bytes(b"this is not a jpeg")
    data = (tmp_path / "masks" / "001.png").read_bytes()
    (tmp_path / "masks" / "001.png").write_bytes(data[: len(data) // 2])
    _register_fails(spec, "000.jpg: image cannot be read", "001.png: mask cannot be read")


def test_many_problems_list_the_first_n_and_a_count(tmp_path):
    spec = "name=many," + _sem_seg_dataset(tmp_path, num_images=25)
    for i in range(25):
        os.remove(tmp_path / "masks" / f"{i:03d}.png")
    message = _register_fails(spec, "25 problem(s) in 25 file(s); the first 20 are:", "... and 5 more.")
    assert message.count("image has no mask") == 20


def test_coco_annotations_pointing_to_missing_images_or_categories(tmp_path):
    os.makedirs(tmp_path / "images")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    content = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 8},
                   {"id": 2, "file_name": "missing.jpg", "height": 6, "width": 8}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 7, "image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]},
            {"id": 8, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]},
        ],
    }
    (tmp_path / "train.json").write_text(json.dumps(content))
    spec = f"name=bad_refs,type=coco_instance,json_file={tmp_path / 'train.json'},image_root={tmp_path / 'images'}"
    _register_fails(
        spec,
        "annotation 7 refers to image id 42, which does not exist",
        "annotation 8 uses category id 3, which does not exist",
    )
    # with the references fixed, the missing image file is found
    content["annotations"] = content["annotations"][1:]
    content["annotations"][0]["category_id"] = 1
    (tmp_path / "train.json").write_text(json.dumps(content))
    _register_fails(spec, "missing.jpg: image does not exist")


def test_coco_json_that_is_not_json(tmp_path):
    (tmp_path / "train.json").write_text("{not json")
    spec = f"name=not_json,type=coco_instance,json_file={tmp_path / 'train.json'},image_root={tmp_path}"
    _register_fails(spec, "train.json: annotation file is not valid JSON")


def test_panoptic_png_with_ids_missing_from_segments_info(tmp_path):
    data = synthetic.generate(str(tmp_path / "pan"), seed=2, splits={"train": 2})
    json_file = os.path.join(data, "annotations", "panoptic_train.json")
    with open(json_file) as f:
        content = json.load(f)
    dropped = content["annotations"][0]["segments_info"].pop()
    bad_category = content["annotations"][1]["segments_info"][0]
    bad_category["category_id"] = 99
    with open(json_file, "w") as f:
        json.dump(content, f)
    spec = (
        f"name=bad_pan,type=coco_panoptic,json_file={json_file},image_root={data}/train,"
        f"panoptic_root={data}/panoptic_train"
    )
    _register_fails(spec, "uses category id 99, which does not exist")
    bad_category["category_id"] = bad_category["id"] // 1000  # the generator's ids: category * 1000 + k
    with open(json_file, "w") as f:
        json.dump(content, f)
    _register_fails(spec, f"segment id(s) [{dropped['id']}] in the PNG are not in segments_info")


def test_one_failing_dataset_registers_none_of_the_config(tmp_path):
    good = "name=cfg_good," + _sem_seg_dataset(tmp_path / "good")
    bad = "name=cfg_bad," + _sem_seg_dataset(tmp_path / "bad")
    os.remove(tmp_path / "bad" / "masks" / "000.png")
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.DATASETS.CUSTOM = [good, bad]
    with pytest.raises(DatasetValidationError, match="Dataset 'cfg_bad' failed validation"):
        custom.register_custom_datasets(cfg)
    assert "cfg_good" not in DatasetCatalog.list() and "cfg_bad" not in DatasetCatalog.list()


def test_validate_dataset_dicts_on_records_of_any_registered_dataset(tmp_path):
    data = synthetic.generate(str(tmp_path / "syn"), seed=0, splits={"val": 2})
    names = synthetic.register_synthetic(data, prefix="validation_synth", splits=("val",))
    try:
        for name in names:
            validate_dataset_dicts(DatasetCatalog.get(name), MetadataCatalog.get(name), name)
        records = DatasetCatalog.get("validation_synth_panoptic_val")
        records[0]["height"] += 1
        report = validate_dataset_dicts(
            records, MetadataCatalog.get("validation_synth_panoptic_val"), "x", report=ValidationReport("x")
        )
        assert len(report) == 1 and "but the annotations say" in report.problems[0][1]
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_check_dataset_tool_exit_status_and_listing(tmp_path, capsys):
    good = "name=tool_good," + _sem_seg_dataset(tmp_path / "good")
    bad = "name=tool_bad," + _sem_seg_dataset(tmp_path / "bad")
    os.remove(tmp_path / "bad" / "masks" / "001.png")
    module_spec = importlib.util.spec_from_file_location("check_dataset", os.path.join(REPO_ROOT, "tools", "check_dataset.py"))
    tool = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(tool)

    assert tool.main(["--spec", good, bad]) == 1
    out, err = capsys.readouterr()
    assert "OK     tool_good (3 images)" in out
    assert "FAILED tool_bad" in err and "001.jpg: image has no mask" in err
    assert tool.main(["--spec", good]) == 0


@pytest.mark.parametrize(
    "dataset, mapper, num_classes, ok",
    [
        ("synthetic_panoptic_train", "mask_former_panoptic", 8, True),
        ("synthetic_panoptic_train", "mask_former_panoptic", 4, False),  # 8 classes, things and stuff
        ("synthetic_instance_train", "mask_former_instance", 4, True),  # 4 thing classes
        ("synthetic_instance_train", "coco_instance_lsj", 3, False),
        ("synthetic_sem_seg_train", "mask_former_semantic", 7, False),
    ],
)
def test_num_classes_must_cover_the_training_classes(dataset, mapper, num_classes, ok):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    if ok:
        check_num_classes(cfg)
    else:
        with pytest.raises(ValueError, match=f"NUM_CLASSES is {num_classes} but the training dataset '{dataset}'"):
            check_num_classes(cfg)
