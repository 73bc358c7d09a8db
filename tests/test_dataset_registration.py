"""
The builtin dataset registrations: names, evaluator types, class tables and metadata as in the
original Mask2Former, loading from tiny fake dataset layouts, and clear errors when files are
missing.
"""
import builtins
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES
from PIL import Image

from mask2former.data.datasets import DatasetLayoutError, register_all_mask2former_datasets
from mask2former.data.datasets.categories import ade20k_150_categories, ade20k_instance_categories

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (evaluator_type, number of stuff_classes, number of thing_classes, ignore_label)
EXPECTED = {
    "coco_2017_train": ("coco", None, 80, None),
    "coco_2017_val": ("coco", None, 80, None),
    "coco_2017_train_panoptic": ("coco_panoptic_seg", 133, 80, 255),
    "coco_2017_val_panoptic": ("coco_panoptic_seg", 133, 80, 255),
    "coco_2017_train_panoptic_with_sem_seg": ("coco_panoptic_seg", 133, 80, 255),
    "coco_2017_val_panoptic_with_sem_seg": ("coco_panoptic_seg", 133, 80, 255),
    "coco_2017_train_stuff_10k_sem_seg": ("sem_seg", 171, None, 255),
    "coco_2017_test_stuff_10k_sem_seg": ("sem_seg", 171, None, 255),
    "cityscapes_fine_sem_seg_train": ("cityscapes_sem_seg", 19, 8, 255),
    "cityscapes_fine_sem_seg_val": ("cityscapes_sem_seg", 19, 8, 255),
    "cityscapes_fine_instance_seg_train": ("cityscapes_instance", 19, 8, None),
    "cityscapes_fine_instance_seg_val": ("cityscapes_instance", 19, 8, None),
    "cityscapes_fine_panoptic_train": ("cityscapes_panoptic_seg", 19, 19, 255),
    "cityscapes_fine_panoptic_val": ("cityscapes_panoptic_seg", 19, 19, 255),
    "ade20k_sem_seg_train": ("sem_seg", 150, None, 255),
    "ade20k_sem_seg_val": ("sem_seg", 150, None, 255),
    "ade20k_panoptic_train": ("ade20k_panoptic_seg", 150, 100, 255),
    "ade20k_panoptic_val": ("ade20k_panoptic_seg", 150, 100, 255),
    "ade20k_instance_train": ("coco", None, 100, None),
    "ade20k_instance_val": ("coco", None, 100, None),
    "ade20k_full_sem_seg_train": ("sem_seg", 847, None, 65535),
    "ade20k_full_sem_seg_val": ("sem_seg", 847, None, 65535),
    "mapillary_vistas_sem_seg_train": ("sem_seg", 65, None, 65),
    "mapillary_vistas_sem_seg_val": ("sem_seg", 65, None, 65),
    "mapillary_vistas_panoptic_train": ("mapillary_vistas_panoptic_seg", 65, 65, 65),
    "mapillary_vistas_panoptic_val": ("mapillary_vistas_panoptic_seg", 65, 65, 65),
}

# The datasets registered by Mask2Former itself (the others are Detectron2's builtins).
OWN_DATASETS = [
    "coco_2017_train_panoptic_with_sem_seg",
    "coco_2017_val_panoptic_with_sem_seg",
    "coco_2017_train_stuff_10k_sem_seg",
    "coco_2017_test_stuff_10k_sem_seg",
    "ade20k_panoptic_train",
    "ade20k_panoptic_val",
    "ade20k_instance_train",
    "ade20k_instance_val",
    "ade20k_full_sem_seg_train",
    "ade20k_full_sem_seg_val",
    "mapillary_vistas_sem_seg_train",
    "mapillary_vistas_sem_seg_val",
    "mapillary_vistas_panoptic_train",
    "mapillary_vistas_panoptic_val",
]


@pytest.fixture
def register_under():
    """Re-root Mask2Former's datasets for one test, then restore the default root."""
    yield lambda root: register_all_mask2former_datasets(str(root))
    register_all_mask2former_datasets()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_with_upstream_metadata(name):
    evaluator_type, num_stuff, num_things, ignore_label = EXPECTED[name]
    assert name in DatasetCatalog.list()
    metadata = MetadataCatalog.get(name)
    assert metadata.evaluator_type == evaluator_type
    if num_stuff is not None:
        assert len(metadata.stuff_classes) == num_stuff
    if num_things is not None:
        assert len(metadata.thing_classes) == num_things
    if ignore_label is not None:
        assert metadata.ignore_label == ignore_label


def test_coco_panoptic_metadata():
    coco_things = [c for c in COCO_CATEGORIES if c["isthing"]]
    for name in ["coco_2017_val_panoptic_with_sem_seg", "coco_2017_val_panoptic"]:
        metadata = MetadataCatalog.get(name)
        assert metadata.thing_classes == [c["name"] for c in coco_things]
        assert metadata.thing_colors == [c["color"] for c in coco_things]
    metadata = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert metadata.label_divisor == 1000
    assert metadata.stuff_classes[0] == "person" and metadata.stuff_classes[80] == "banner"
    # COCO ids 1..90 of the 80 things map to 0..79; the 53 stuff ids 92..200 follow as 80..132;
    # the stuff map lists every class so that semantic evaluation covers things too.
    expected_thing_ids = {c["id"]: i for i, c in enumerate(coco_things)}
    assert metadata.thing_dataset_id_to_contiguous_id == expected_thing_ids
    assert metadata.thing_dataset_id_to_contiguous_id[90] == 79
    assert len(metadata.stuff_dataset_id_to_contiguous_id) == 133
    assert metadata.stuff_dataset_id_to_contiguous_id[92] == 80
    assert metadata.stuff_dataset_id_to_contiguous_id[200] == 132
    annotations = os.path.join("coco", "annotations")
    assert metadata.json_file.endswith(os.path.join(annotations, "instances_val2017.json"))
    assert metadata.panoptic_json.endswith(os.path.join(annotations, "panoptic_val2017.json"))
    assert metadata.sem_seg_root.endswith(os.path.join("coco", "panoptic_semseg_val2017"))
    assert metadata.image_root.endswith(os.path.join("coco", "val2017"))


def test_ade20k_tables_agree_with_detectron2_and_with_each_other():
    table = ade20k_150_categories()
    assert [c["name"] for c in table] == ADE20K_SEM_SEG_CATEGORIES
    thing_ids = {c["id"] for c in table if c["isthing"]}
    assert thing_ids == {c["ade20k_150_id"] for c in ade20k_instance_categories()}
    for name in ["ade20k_sem_seg_val", "ade20k_panoptic_val"]:
        colors = MetadataCatalog.get(name).stuff_colors
        assert len(colors) == 150
        assert colors[0] == [120, 120, 120] and colors[149] == [92, 0, 255]

    panoptic = MetadataCatalog.get("ade20k_panoptic_val")
    assert panoptic.thing_classes[:3] == ["bed", "window ", "cabinet"]
    assert panoptic.thing_dataset_id_to_contiguous_id[7] == 7
    instance_json = os.path.join("ADEChallengeData2016", "ade20k_instance_val.json")
    assert panoptic.json_file.endswith(instance_json)

    instance = MetadataCatalog.get("ade20k_instance_val")
    assert instance.thing_classes[:3] == ["bed", "windowpane", "cabinet"]
    assert instance.thing_classes[-1] == "flag"
    assert instance.thing_dataset_id_to_contiguous_id[7] == 0
    assert instance.thing_dataset_id_to_contiguous_id[12] == 3
    assert instance.thing_dataset_id_to_contiguous_id[149] == 99


def test_ade20k_full_coco_stuff_and_mapillary_tables():
    full = MetadataCatalog.get("ade20k_full_sem_seg_val")
    assert full.stuff_classes[0] == "wall"
    assert full.stuff_classes[244] == "roof"
    assert full.stuff_classes[846] == "adding machine, totalizer, totaliser"

    stuff_10k = MetadataCatalog.get("coco_2017_test_stuff_10k_sem_seg")
    assert stuff_10k.stuff_classes[:2] == ["person", "bicycle"]
    assert stuff_10k.stuff_classes[80] == "banner" and stuff_10k.stuff_classes[170] == "wood"
    assert stuff_10k.stuff_dataset_id_to_contiguous_id[1] == 0
    assert stuff_10k.stuff_dataset_id_to_contiguous_id[90] == 79
    assert stuff_10k.stuff_dataset_id_to_contiguous_id[92] == 80
    assert stuff_10k.stuff_dataset_id_to_contiguous_id[182] == 170

    semantic = MetadataCatalog.get("mapillary_vistas_sem_seg_val")
    assert semantic.stuff_classes[0] == "Bird" and semantic.stuff_classes[64] == "Ego Vehicle"
    assert semantic.stuff_colors[0] == [165, 42, 42] and semantic.stuff_colors[64] == [120, 10, 10]
    panoptic = MetadataCatalog.get("mapillary_vistas_panoptic_val")
    assert panoptic.thing_classes == semantic.stuff_classes
    assert len(panoptic.thing_dataset_id_to_contiguous_id) == 37
    assert panoptic.thing_dataset_id_to_contiguous_id[1] == 0
    assert 14 not in panoptic.thing_dataset_id_to_contiguous_id  # Road is stuff
    assert panoptic.stuff_dataset_id_to_contiguous_id[65] == 64
    assert panoptic.json_file is None


def test_category_tables_under_their_upstream_names():
    from mask2former.data.datasets import (
        register_ade20k_full,
        register_ade20k_instance,
        register_ade20k_panoptic,
        register_coco_stuff_10k,
        register_mapillary_vistas,
        register_mapillary_vistas_panoptic,
    )

    ade = register_ade20k_panoptic.ADE20K_150_CATEGORIES
    assert ade[8] == {"color": [230, 230, 230], "id": 8, "isthing": 1, "name": "window "}
    assert register_ade20k_panoptic.ADE20k_COLORS[48] == [140, 140, 140]
    full = register_ade20k_full.ADE20K_SEM_SEG_FULL_CATEGORIES
    assert full[0] == {"name": "wall", "id": 2978, "trainId": 0}
    assert full[846] == {"name": "adding machine, totalizer, totaliser", "id": 3148, "trainId": 846}
    assert len({c["id"] for c in full}) == 847
    assert register_ade20k_instance.ADE_CATEGORIES[:2] == [
        {"id": 7, "name": "bed"},
        {"id": 8, "name": "windowpane"},
    ]
    stuff = register_coco_stuff_10k.COCO_CATEGORIES
    assert (stuff[80]["id"], stuff[80]["name"]) == (92, "banner")
    assert (stuff[170]["id"], stuff[170]["name"]) == (182, "wood")
    semantic = register_mapillary_vistas.MAPILLARY_VISTAS_SEM_SEG_CATEGORIES
    assert len(semantic) == 66
    assert semantic[8] == {
        "color": [140, 140, 200],
        "instances": True,
        "readable": "Crosswalk - Plain",
        "name": "construction--flat--crosswalk-plain",
        "evaluate": True,
    }
    assert semantic[65]["name"] == "void--unlabeled" and not semantic[65]["evaluate"]
    panoptic = register_mapillary_vistas_panoptic.MAPILLARY_VISTAS_SEM_SEG_CATEGORIES
    assert panoptic[43] == {
        "color": [70, 100, 150],
        "id": 44,
        "isthing": 0,
        "name": "Pothole",
        "supercategory": "object--pothole",
    }


def test_registration_reads_no_dataset_file(tmp_path, monkeypatch, register_under):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"registration touched the disk: {args}")

    with monkeypatch.context() as patch:
        disk_access = [(builtins, "open"), (os, "stat"), (os, "listdir"), (os, "scandir")]
        for module, attribute in disk_access:
            patch.setattr(module, attribute, forbidden)
        register_under(tmp_path / "not-there")
    assert MetadataCatalog.get("ade20k_panoptic_val").image_root == str(
        tmp_path / "not-there" / "ADEChallengeData2016" / "images" / "validation"
    )


@pytest.mark.parametrize("name", OWN_DATASETS)
def test_missing_root_gives_a_clear_error(tmp_path, register_under, name):
    root = tmp_path / "not-there"
    register_under(root)
    with pytest.raises(DatasetLayoutError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert f"Dataset '{name}'" in message
    assert f"The dataset root '{root}' does not exist" in message
    assert f"missing: {root}{os.sep}" in message
    assert "datasets/README.md" in message


def test_missing_generated_file_names_its_preparation_script(tmp_path, register_under):
    dataset = tmp_path / "ADEChallengeData2016"
    for folder in ["images/validation", "ade20k_panoptic_val", "annotations_detectron2/validation"]:
        (dataset / folder).mkdir(parents=True)
    register_under(tmp_path)
    with pytest.raises(DatasetLayoutError) as error:
        DatasetCatalog.get("ade20k_panoptic_val")
    message = str(error.value)
    assert "1 expected path(s) are missing" in message
    assert "does not exist" not in message
    assert (
        f"missing: {dataset / 'ade20k_panoptic_val.json'}  "
        f"(panoptic annotation json, made by datasets/prepare_ade20k_pan_seg.py)"
    ) in message
    assert "section 'ADE20K'" in message


def test_missing_image_of_the_first_annotation_is_named(tmp_path, register_under):
    coco = tmp_path / "coco"
    write_coco_panoptic(coco, "val2017")
    os.remove(coco / "val2017" / "000000000042.jpg")
    register_under(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"missing: .*000000000042\.jpg  \(image\)"):
        DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")


# ---------------------------------------------------------------- loading from fake layouts


def save_image(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)


def save_jpg(path):
    save_image(path, np.full((4, 6, 3), 128, dtype=np.uint8))


def write_json(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f)


def write_coco_panoptic(coco, split):
    save_jpg(coco / split / "000000000042.jpg")
    save_image(coco / f"panoptic_{split}" / "000000000042.png", np.zeros((4, 6, 3), dtype=np.uint8))
    semantic = np.zeros((4, 6), dtype=np.uint8)
    save_image(coco / f"panoptic_semseg_{split}" / "000000000042.png", semantic)
    segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "area": 4},
        {"id": 300, "category_id": 92, "iscrowd": 0, "area": 8},
    ]
    write_json(
        coco / "annotations" / f"panoptic_{split}.json",
        {
            "annotations": [
                {"image_id": 42, "file_name": "000000000042.png", "segments_info": segments}
            ]
        },
    )


def test_load_coco_panoptic_with_sem_seg(tmp_path, register_under):
    coco = tmp_path / "coco"
    write_coco_panoptic(coco, "val2017")
    register_under(tmp_path)
    (record,) = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert record["file_name"] == str(coco / "val2017" / "000000000042.jpg")
    assert record["image_id"] == 42
    assert record["pan_seg_file_name"] == str(coco / "panoptic_val2017" / "000000000042.png")
    assert record["sem_seg_file_name"] == str(coco / "panoptic_semseg_val2017" / "000000000042.png")
    assert record["segments_info"] == [
        {"id": 1, "category_id": 0, "iscrowd": 0, "area": 4, "isthing": True},
        {"id": 300, "category_id": 80, "iscrowd": 0, "area": 8, "isthing": False},
    ]


def test_load_panoptic_rejects_unknown_category(tmp_path, register_under):
    coco = tmp_path / "coco"
    write_coco_panoptic(coco, "val2017")
    bad = {
        "image_id": 42,
        "file_name": "000000000042.png",
        "segments_info": [{"id": 5, "category_id": 91}],
    }
    write_json(coco / "annotations" / "panoptic_val2017.json", {"annotations": [bad]})
    register_under(tmp_path)
    message = r"panoptic_val2017\.json: segment 5 of 000000000042\.png has category_id 91"
    with pytest.raises(ValueError, match=message):
        DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")


def test_load_mapillary_vistas(tmp_path, register_under):
    split_dir = tmp_path / "mapillary_vistas" / "validation"
    save_jpg(split_dir / "images" / "abc.jpg")
    save_image(split_dir / "labels" / "abc.png", np.full((4, 6), 65, dtype=np.uint8))
    save_image(split_dir / "panoptic" / "abc.png", np.zeros((4, 6, 3), dtype=np.uint8))
    segments = [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 14}]
    write_json(
        split_dir / "panoptic" / "panoptic_2018.json",
        {"annotations": [{"image_id": "abc", "file_name": "abc.png", "segments_info": segments}]},
    )
    register_under(tmp_path)

    (semantic,) = DatasetCatalog.get("mapillary_vistas_sem_seg_val")
    assert semantic == {
        "file_name": str(split_dir / "images" / "abc.jpg"),
        "sem_seg_file_name": str(split_dir / "labels" / "abc.png"),
    }
    (panoptic,) = DatasetCatalog.get("mapillary_vistas_panoptic_val")
    assert panoptic["image_id"] == "abc"
    assert panoptic["file_name"] == str(split_dir / "images" / "abc.jpg")
    assert panoptic["sem_seg_file_name"] == str(split_dir / "labels" / "abc.png")
    assert panoptic["segments_info"] == [
        {"id": 7, "category_id": 0, "isthing": True},
        {"id": 8, "category_id": 13, "isthing": False},
    ]


def test_load_ade20k_full_and_coco_stuff_10k(tmp_path, register_under):
    full = tmp_path / "ADE20K_2021_17_01"
    save_jpg(full / "images_detectron2" / "validation" / "ADE_frame_1.jpg")
    save_image(
        full / "annotations_detectron2" / "validation" / "ADE_frame_1.tif",
        np.full((4, 6), 846, dtype=np.uint16),
    )
    stuff = tmp_path / "coco" / "coco_stuff_10k"
    for split in ["train", "test"]:
        save_jpg(stuff / "images_detectron2" / split / "COCO_1.jpg")
        label = np.zeros((4, 6), dtype=np.uint8)
        save_image(stuff / "annotations_detectron2" / split / "COCO_1.png", label)
    register_under(tmp_path)

    assert DatasetCatalog.get("ade20k_full_sem_seg_val") == [
        {
            "file_name": str(full / "images_detectron2" / "validation" / "ADE_frame_1.jpg"),
            "sem_seg_file_name": str(
                full / "annotations_detectron2" / "validation" / "ADE_frame_1.tif"
            ),
        }
    ]
    for split in ["train", "test"]:
        assert DatasetCatalog.get(f"coco_2017_{split}_stuff_10k_sem_seg") == [
            {
                "file_name": str(stuff / "images_detectron2" / split / "COCO_1.jpg"),
                "sem_seg_file_name": str(stuff / "annotations_detectron2" / split / "COCO_1.png"),
            }
        ]


def load_prepare_script(name):
    spec = importlib.util.spec_from_file_location(
        f"_registration_test_{name}", os.path.join(REPO_ROOT, "datasets", name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ade20k_prepared_with_the_scripts_loads_as_panoptic_and_instance(tmp_path, register_under):
    dataset = tmp_path / "ADEChallengeData2016"
    # raw ADE20K labels: wall (1), floor (4), bed (8)
    semantic = np.array([[1, 1, 1, 8], [1, 1, 8, 8], [4, 4, 8, 8]], dtype=np.uint8)
    instance = np.zeros((3, 4, 3), dtype=np.uint8)
    instance[:, 2:4, 0] = 1  # instance class 1 = bed
    instance[:, 2:4, 1] = 1
    instance[0, 3, 0:2] = [4, 2]  # a one-pixel person (instance class 4)
    for dirname in ["training", "validation"]:
        image = np.zeros((3, 4, 3), dtype=np.uint8)
        save_image(dataset / "images" / dirname / "ADE_x_1.jpg", image)
        save_image(dataset / "annotations" / dirname / "ADE_x_1.png", semantic)
        save_image(dataset / "annotations_instance" / dirname / "ADE_x_1.png", instance)
    for script in ["prepare_ade20k_sem_seg", "prepare_ade20k_pan_seg", "prepare_ade20k_ins_seg"]:
        load_prepare_script(script).main(["--root", str(tmp_path)])
    register_under(tmp_path)

    (panoptic,) = DatasetCatalog.get("ade20k_panoptic_val")
    assert panoptic["image_id"] == "ADE_x_1"
    semantic_png = dataset / "annotations_detectron2" / "validation" / "ADE_x_1.png"
    assert panoptic["sem_seg_file_name"] == str(semantic_png)
    assert [(s["category_id"], s["isthing"], s["area"]) for s in panoptic["segments_info"]] == [
        (0, False, 5),  # wall
        (3, False, 2),  # floor
        (7, True, 5),  # bed
        (12, True, 1),  # person
    ]

    (instances,) = DatasetCatalog.get("ade20k_instance_val")
    assert instances["file_name"] == str(dataset / "images" / "validation" / "ADE_x_1.jpg")
    assert (instances["height"], instances["width"]) == (3, 4)
    # contiguous thing ids: bed (ADE20K-150 id 7) is thing 0, person (12) is thing 3
    assert [a["category_id"] for a in instances["annotations"]] == [0, 3]
    assert [list(a["bbox"]) for a in instances["annotations"]] == [[2, 0, 2, 3], [3, 0, 1, 1]]


def test_detectron2_builtin_datasets_follow_DETECTRON2_DATASETS(tmp_path):
    """Detectron2 registers its builtin datasets at import time, so this runs in a fresh process."""
    root = tmp_path / "data"
    ade = root / "ADEChallengeData2016"
    save_jpg(ade / "images" / "validation" / "ADE_val_1.jpg")
    label = np.zeros((4, 6), dtype=np.uint8)
    save_image(ade / "annotations_detectron2" / "validation" / "ADE_val_1.png", label)
    coco = root / "coco"
    save_jpg(coco / "val2017" / "000000000042.jpg")
    write_json(
        coco / "annotations" / "instances_val2017.json",
        {
            "images": [{"id": 42, "file_name": "000000000042.jpg", "height": 4, "width": 6}],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 42,
                    "category_id": 18,
                    "bbox": [1, 1, 2, 2],
                    "area": 4,
                    "iscrowd": 0,
                    "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]],
                }
            ],
            "categories": [
                {"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]
            ],
        },
    )
    probe = textwrap.dedent(
        """
        import json
        import mask2former
        from detectron2.data import DatasetCatalog, MetadataCatalog
        from mask2former.data.datasets import DatasetLayoutError

        result = {}
        result["ade20k_sem_seg_val"] = DatasetCatalog.get("ade20k_sem_seg_val")
        coco = DatasetCatalog.get("coco_2017_val")
        result["coco_2017_val"] = [
            (r["file_name"], [a["category_id"] for a in r["annotations"]]) for r in coco
        ]
        for name in [
            "cityscapes_fine_sem_seg_val",
            "cityscapes_fine_instance_seg_val",
            "cityscapes_fine_panoptic_val",
            "coco_2017_train_panoptic",
            "ade20k_sem_seg_train",
        ]:
            try:
                DatasetCatalog.get(name)
                result[name] = "loaded"
            except DatasetLayoutError as error:
                result[name] = str(error)
        result["image_roots"] = {
            name: MetadataCatalog.get(name).image_root
            for name in [
                "ade20k_panoptic_val", "coco_2017_val_panoptic_with_sem_seg", "coco_2017_val"
            ]
        }
        print("RESULT " + json.dumps(result))
        """
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT ", 1)[1])

    assert result["ade20k_sem_seg_val"] == [
        {
            "file_name": str(ade / "images" / "validation" / "ADE_val_1.jpg"),
            "sem_seg_file_name": str(
                ade / "annotations_detectron2" / "validation" / "ADE_val_1.png"
            ),
        }
    ]
    # COCO category 18 (dog) is the 17th thing class
    assert result["coco_2017_val"] == [[str(coco / "val2017" / "000000000042.jpg"), [16]]]
    for name, section in [
        ("cityscapes_fine_sem_seg_val", "Cityscapes"),
        ("cityscapes_fine_instance_seg_val", "Cityscapes"),
        ("cityscapes_fine_panoptic_val", "Cityscapes"),
        ("coco_2017_train_panoptic", "COCO"),
        ("ade20k_sem_seg_train", "ADE20K"),
    ]:
        assert f"Dataset '{name}' cannot be loaded" in result[name]
        assert f"missing: {root}{os.sep}" in result[name]
        assert f"section '{section}' of datasets/README.md" in result[name]
    assert "made by datasets/prepare_ade20k_sem_seg.py" in result["ade20k_sem_seg_train"]
    assert result["image_roots"] == {
        "ade20k_panoptic_val": str(ade / "images" / "validation"),
        "coco_2017_val_panoptic_with_sem_seg": str(coco / "val2017"),
        "coco_2017_val": str(coco / "val2017"),
    }
