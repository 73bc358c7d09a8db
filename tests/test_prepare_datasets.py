"""
The dataset preparation scripts of datasets/, run on tiny copies of the raw dataset layouts;
every expected output below is written out by hand from the inputs the test builds.
"""
import importlib.util
import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    module_name = f"_datasets_{name}"
    if module_name not in sys.modules:
        path = os.path.join(REPO_ROOT, "datasets", name + ".py")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        # Registered so that worker processes can unpickle the script's functions.
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def save_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def save_jpg(path, height, width):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), (90, 60, 30)).save(path)


def rgb_of(segment_id):
    return [segment_id % 256, segment_id // 256 % 256, segment_id // 65536]


def id_of(rgb):
    rgb = np.asarray(rgb, dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


# ---------------------------------------------------------------- ADE20K semantic

RAW_ADE_LABEL = [[0, 1, 150], [2, 0, 5]]
EXPECTED_ADE_LABEL = [[255, 0, 149], [1, 255, 4]]


def test_prepare_ade20k_sem_seg_shifts_labels_and_maps_unlabeled_to_255(tmp_path, capsys):
    script = load_script("prepare_ade20k_sem_seg")
    dataset = tmp_path / "ADEChallengeData2016"
    for split in ["training", "validation"]:
        save_png(str(dataset / "annotations" / split / f"ADE_{split}_1.png"), RAW_ADE_LABEL)
        (dataset / "annotations" / split / "notes.txt").write_text("not a label")

    script.main(["--root", str(tmp_path)])

    for split in ["training", "validation"]:
        output_dir = dataset / "annotations_detectron2" / split
        assert sorted(os.listdir(output_dir)) == [f"ADE_{split}_1.png"]
        output = np.asarray(Image.open(output_dir / f"ADE_{split}_1.png"))
        assert output.dtype == np.uint8
        np.testing.assert_array_equal(output, EXPECTED_ADE_LABEL)
    assert "wrote 1 labels" in capsys.readouterr().out


def test_prepare_ade20k_sem_seg_rejects_non_8_bit_labels(tmp_path):
    script = load_script("prepare_ade20k_sem_seg")
    bad = tmp_path / "bad.png"
    Image.fromarray(np.array([[1, 2]], dtype=np.uint16)).save(bad)
    with pytest.raises(ValueError, match="bad.png"):
        script.convert_label_file(str(bad), str(tmp_path / "out.png"))


def test_prepare_ade20k_sem_seg_names_a_missing_annotation_folder(tmp_path):
    script = load_script("prepare_ade20k_sem_seg")
    with pytest.raises(FileNotFoundError, match="annotations/training"):
        script.main(["--root", str(tmp_path)])


# ---------------------------------------------------------------- COCO semantic from panoptic

# Segment ids in the panoptic PNG: 1 = person (category 1, class 0), 300 = banner (category 92,
# the first stuff class, 80), 131077 = rug-merged (category 200, the last class, 132), 77 is in the
# PNG but not in the json, 0 is void.
COCO_PANOPTIC_IDS = [
    [1, 1, 300, 300, 0],
    [1, 77, 300, 131077, 131077],
    [0, 0, 0, 131077, 131077],
]
COCO_SEGMENTS = [
    {"id": 1, "category_id": 1, "iscrowd": 0},
    {"id": 300, "category_id": 92, "iscrowd": 0},
    {"id": 131077, "category_id": 200, "iscrowd": 0},
]
EXPECTED_COCO_SEMANTIC = [
    [0, 0, 80, 80, 255],
    [0, 255, 80, 132, 132],
    [255, 255, 255, 132, 132],
]


def write_coco_panoptic_split(coco_dir, split, segments=COCO_SEGMENTS):
    rgb = np.array([[rgb_of(v) for v in row] for row in COCO_PANOPTIC_IDS], dtype=np.uint8)
    save_png(str(coco_dir / f"panoptic_{split}" / "000000000042.png"), rgb)
    annotation = {"image_id": 42, "file_name": "000000000042.png", "segments_info": segments}
    (coco_dir / "annotations").mkdir(parents=True, exist_ok=True)
    with open(coco_dir / "annotations" / f"panoptic_{split}.json", "w") as f:
        json.dump({"annotations": [annotation], "images": [], "categories": []}, f)


@pytest.mark.parametrize("workers", [0, 1])
def test_prepare_coco_semantic_from_panoptic(tmp_path, workers):
    script = load_script("prepare_coco_semantic_annos_from_panoptic_annos")
    coco = tmp_path / "coco"
    for split in ["train2017", "val2017"]:
        write_coco_panoptic_split(coco, split)

    script.main(["--root", str(tmp_path), "--workers", str(workers)])

    for split in ["train2017", "val2017"]:
        semantic = np.asarray(Image.open(coco / f"panoptic_semseg_{split}" / "000000000042.png"))
        assert semantic.dtype == np.uint8
        np.testing.assert_array_equal(semantic, EXPECTED_COCO_SEMANTIC)


def test_prepare_coco_semantic_rejects_unknown_category(tmp_path):
    script = load_script("prepare_coco_semantic_annos_from_panoptic_annos")
    coco = tmp_path / "coco"
    write_coco_panoptic_split(
        coco, "val2017", segments=[{"id": 1, "category_id": 91, "iscrowd": 0}]
    )
    with pytest.raises(ValueError, match=r"000000000042\.png.*category_id 91"):
        script.separate_coco_semantic_from_panoptic(
            str(coco / "annotations" / "panoptic_val2017.json"),
            str(coco / "panoptic_val2017"),
            str(coco / "panoptic_semseg_val2017"),
            [{"id": 1}, {"id": 92}],
        )


def test_prepare_coco_semantic_names_a_missing_json(tmp_path):
    script = load_script("prepare_coco_semantic_annos_from_panoptic_annos")
    with pytest.raises(FileNotFoundError, match="panoptic_val2017.json"):
        script.main(["--root", str(tmp_path), "--workers", "0"])


# ---------------------------------------------------------------- ADE20K panoptic and instance

# A 6x8 image. Raw semantic labels: wall (1) on rows 0-1; skyscraper (49) and floor (4) on rows 2-3;
# bed (8, a thing class) and unlabeled (0) on rows 4-5.
ADE_RAW_SEMANTIC = np.array(
    [
        [1] * 8,
        [1] * 8,
        [49] * 4 + [4] * 4,
        [49] * 4 + [4] * 4,
        [8] * 6 + [0] * 2,
        [8] * 6 + [0] * 2,
    ]
)
# Instances (R = instance class, G = instance index): two beds (instance class 1) on rows 4-5,
# cols 0-2 and 3-5, and a person (instance class 4) on col 7, rows 0-2, over wall and floor.
ADE_INSTANCE_CLASS = np.zeros((6, 8), dtype=np.uint8)
ADE_INSTANCE_INDEX = np.zeros((6, 8), dtype=np.uint8)
ADE_INSTANCE_CLASS[4:6, 0:6] = 1
ADE_INSTANCE_INDEX[4:6, 0:3] = 1
ADE_INSTANCE_INDEX[4:6, 3:6] = 2
ADE_INSTANCE_CLASS[0:3, 7] = 4
ADE_INSTANCE_INDEX[0:3, 7] = 3

ADE_SPLITS = [("train", "training"), ("val", "validation")]


def write_raw_ade20k(root):
    dataset = root / "ADEChallengeData2016"
    for _, dirname in ADE_SPLITS:
        image_id = f"ADE_{dirname}_00000001"
        save_jpg(str(dataset / "images" / dirname / f"{image_id}.jpg"), 6, 8)
        save_png(str(dataset / "annotations" / dirname / f"{image_id}.png"), ADE_RAW_SEMANTIC)
        instance = np.stack(
            [ADE_INSTANCE_CLASS, ADE_INSTANCE_INDEX, np.zeros_like(ADE_INSTANCE_CLASS)], axis=-1
        )
        save_png(str(dataset / "annotations_instance" / dirname / f"{image_id}.png"), instance)
    return dataset


def region(rows, cols):
    mask = np.zeros((6, 8), dtype=bool)
    mask[rows, cols] = True
    return mask


def test_prepare_ade20k_pan_seg(tmp_path):
    script = load_script("prepare_ade20k_pan_seg")
    dataset = write_raw_ade20k(tmp_path)
    script.main(["--root", str(tmp_path)])

    for name, dirname in ADE_SPLITS:
        image_id = f"ADE_{dirname}_00000001"
        with open(dataset / f"ade20k_panoptic_{name}.json") as f:
            content = json.load(f)
        assert content["images"] == [
            {"id": image_id, "file_name": image_id + ".jpg", "width": 8, "height": 6}
        ]
        categories = content["categories"]
        assert [c["id"] for c in categories] == list(range(150))
        assert sum(c["isthing"] for c in categories) == 100
        assert categories[48]["name"] == "skyscraper" and categories[48]["color"] == [140, 140, 200]
        stuff_colors = [tuple(c["color"]) for c in categories if not c["isthing"]]
        assert len(set(stuff_colors)) == len(stuff_colors)

        (annotation,) = content["annotations"]
        assert annotation["image_id"] == image_id and annotation["file_name"] == image_id + ".png"
        segments = annotation["segments_info"]
        # Stuff in ascending class order, then instances in ascending instance index; stuff
        # areas and boxes are those of the semantic label, before the things are painted over.
        assert [(s["category_id"], s["area"], s["bbox"]) for s in segments] == [
            (0, 16, [0, 0, 8, 2]),  # wall
            (3, 8, [4, 2, 4, 2]),  # floor
            (48, 8, [0, 2, 4, 2]),  # skyscraper
            (7, 6, [0, 4, 3, 2]),  # bed 1
            (7, 6, [3, 4, 3, 2]),  # bed 2
            (12, 3, [7, 0, 1, 3]),  # person
        ]
        assert all(s["iscrowd"] == 0 for s in segments)
        wall, floor, skyscraper, bed1, bed2, person = [s["id"] for s in segments]
        # Stuff segments and the first instance of a class take the class colour.
        assert wall == id_of([120, 120, 120])
        assert floor == id_of([80, 50, 50])
        assert skyscraper == id_of([140, 140, 200])
        assert bed1 == id_of([204, 5, 255])
        assert person == id_of([150, 5, 61])
        assert len({wall, floor, skyscraper, bed1, bed2, person}) == 6

        panoptic_png = dataset / f"ade20k_panoptic_{name}" / f"{image_id}.png"
        panoptic = id_of(np.asarray(Image.open(panoptic_png)))
        expected = np.zeros((6, 8), dtype=np.int64)
        expected[region(slice(0, 2), slice(None))] = wall
        expected[region(slice(2, 4), slice(0, 4))] = skyscraper
        expected[region(slice(2, 4), slice(4, 8))] = floor
        expected[region(slice(4, 6), slice(0, 3))] = bed1
        expected[region(slice(4, 6), slice(3, 6))] = bed2
        expected[region(slice(0, 3), 7)] = person
        np.testing.assert_array_equal(panoptic, expected)


def test_prepare_ade20k_pan_seg_rejects_an_instance_with_two_classes(tmp_path):
    script = load_script("prepare_ade20k_pan_seg")
    dataset = write_raw_ade20k(tmp_path)
    instance_png = dataset / "annotations_instance" / "training" / "ADE_training_00000001.png"
    instance = np.asarray(Image.open(instance_png)).copy()
    instance[4, 0, 0] = 4  # one pixel of bed 1 claims to be a person
    save_png(str(instance_png), instance)
    message = r"ADE_training_00000001\.png: instance 1 has class value\(s\) \[1, 4\]"
    with pytest.raises(ValueError, match=message):
        script.main(["--root", str(tmp_path)])


# pycocotools' decode trips NumPy 2's __array__ copy-keyword deprecation.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_prepare_ade20k_ins_seg(tmp_path):
    script = load_script("prepare_ade20k_ins_seg")
    dataset = write_raw_ade20k(tmp_path)
    script.main(["--root", str(tmp_path)])

    for name, dirname in ADE_SPLITS:
        image_id = f"ADE_{dirname}_00000001"
        with open(dataset / f"ade20k_instance_{name}.json") as f:
            content = json.load(f)
        assert content["images"] == [
            {"id": image_id, "file_name": image_id + ".jpg", "width": 8, "height": 6}
        ]
        categories = content["categories"]
        assert len(categories) == 100
        assert categories[:3] == [
            {"id": 7, "name": "bed"},
            {"id": 8, "name": "windowpane"},
            {"id": 10, "name": "cabinet"},
        ]
        assert categories[-1] == {"id": 149, "name": "flag"}

        annotations = content["annotations"]
        summary = [
            (a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"])
            for a in annotations
        ]
        assert summary == [
            (1, image_id, 7, [0, 4, 3, 2], 6, 0),
            (2, image_id, 7, [3, 4, 3, 2], 6, 0),
            (3, image_id, 12, [7, 0, 1, 3], 3, 0),
        ]
        expected_masks = [
            region(slice(4, 6), slice(0, 3)),
            region(slice(4, 6), slice(3, 6)),
            region(slice(0, 3), 7),
        ]
        for annotation, expected in zip(annotations, expected_masks):
            segmentation = annotation["segmentation"]
            rle = dict(segmentation, counts=segmentation["counts"].encode())
            assert annotation["segmentation"]["size"] == [6, 8]
            np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), expected)


# ---------------------------------------------------------------- ADE20K-full


def seg_png_color(object_class):
    """The R, G of an ADE20K *_seg.png encoding `object_class` as (R // 10) * 256 + G."""
    return [object_class // 256 * 10 + 3, object_class % 256, 0]


def test_prepare_ade20k_full_sem_seg(tmp_path):
    import pickle

    script = load_script("prepare_ade20k_full_sem_seg")
    folder = os.path.join("ADE20K_2021_17_01", "images", "ADE")
    # A small validation image: wall (object class 2978, label 0) on top, bed (165, label 7) below,
    # and an object class outside the 847 (1) in the last column.
    small = np.zeros((4, 6, 3), dtype=np.uint8)
    small[:2] = seg_png_color(2978)
    small[2:] = seg_png_color(165)
    small[:, 5] = seg_png_color(1)
    # A 520x600 training image: shorter side 520 > 512, so it becomes 512 x round(600 / 520 * 512).
    large = np.zeros((520, 600, 3), dtype=np.uint8)
    large[:, :300] = seg_png_color(3148)  # "adding machine", label 846
    large[:, 300:] = seg_png_color(312)  # "building, edifice", label 1
    for file_name, seg in [("ADE_val_00000001", small), ("ADE_train_00000001", large)]:
        save_png(str(tmp_path / folder / f"{file_name}_seg.png"), seg)
        save_jpg(str(tmp_path / folder / f"{file_name}.jpg"), *seg.shape[:2])
    with open(tmp_path / "ADE20K_2021_17_01" / "index_ade20k.pkl", "wb") as f:
        file_names = ["ADE_val_00000001.jpg", "ADE_train_00000001.jpg"]
        pickle.dump({"folder": [folder, folder], "filename": file_names}, f)

    script.main(["--root", str(tmp_path)])

    output = tmp_path / "ADE20K_2021_17_01"
    validation_tif = output / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif"
    labels = np.asarray(Image.open(validation_tif))
    assert labels.dtype == np.uint16
    expected = np.array([[0] * 5 + [65535]] * 2 + [[7] * 5 + [65535]] * 2)
    np.testing.assert_array_equal(labels, expected)
    validation_jpg = output / "images_detectron2" / "validation" / "ADE_val_00000001.jpg"
    assert Image.open(validation_jpg).size == (6, 4)

    training_tif = output / "annotations_detectron2" / "training" / "ADE_train_00000001.tif"
    labels = np.asarray(Image.open(training_tif))
    assert labels.shape == (512, 591)
    assert (labels[:, :290] == 846).all() and (labels[:, 300:] == 1).all()
    assert set(np.unique(labels).tolist()) == {1, 846}
    training_jpg = output / "images_detectron2" / "training" / "ADE_train_00000001.jpg"
    assert Image.open(training_jpg).size == (591, 512)


def test_prepare_ade20k_full_sem_seg_names_a_missing_index(tmp_path):
    script = load_script("prepare_ade20k_full_sem_seg")
    with pytest.raises(FileNotFoundError, match="index_ade20k.pkl"):
        script.main(["--root", str(tmp_path)])


# ---------------------------------------------------------------- COCO-Stuff-10k

# v1.1: 0 = unlabeled, k = COCO-Stuff id k. Id 12 (street sign) and 91 (hairbrush) have no
# annotations; 90 = toothbrush (class 79), 92 = banner (class 80), 182 = wood (class 170).
RAW_STUFF_10K_V1_1 = [[0, 1, 12], [90, 92, 182]]
EXPECTED_STUFF_10K_V1_1 = [[255, 0, 255], [79, 80, 170]]
# v1.0: 1 = unlabeled, 2-81 = the 80 things in order, 82-172 = the 91 stuff classes in order.
RAW_STUFF_10K_V1_0 = [[1, 2, 81], [82, 172, 2]]
EXPECTED_STUFF_10K_V1_0 = [[255, 0, 79], [80, 170, 0]]


def save_stuff_10k_mat(path, label_map, name_count):
    import scipy.io

    names = np.empty((1, name_count), dtype=object)
    names[0, :] = [f"class{i}" for i in range(name_count)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {"S": np.asarray(label_map, dtype=np.uint16), "names": names})


@pytest.mark.parametrize(
    "name_count,raw,expected",
    [(182, RAW_STUFF_10K_V1_1, EXPECTED_STUFF_10K_V1_1), (172, RAW_STUFF_10K_V1_0, EXPECTED_STUFF_10K_V1_0)],
    ids=["v1.1", "v1.0"],
)
def test_prepare_coco_stuff_10k_converts_both_releases(tmp_path, capsys, name_count, raw, expected):
    script = load_script("prepare_coco_stuff_10k_sem_seg")
    dataset = tmp_path / "coco" / "coco_stuff_10k"
    (dataset / "imageLists").mkdir(parents=True)
    for split, name in [("train", "COCO_train2014_000000000077"), ("test", "COCO_train2014_000000000009")]:
        (dataset / "imageLists" / f"{split}.txt").write_text(name + "\n")
        save_jpg(str(dataset / "images" / f"{name}.jpg"), 2, 3)
        save_stuff_10k_mat(str(dataset / "annotations" / f"{name}.mat"), raw, name_count)

    script.main(["--root", str(tmp_path)])

    for split, name in [("train", "COCO_train2014_000000000077"), ("test", "COCO_train2014_000000000009")]:
        label = np.asarray(Image.open(dataset / "annotations_detectron2" / split / f"{name}.png"))
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, expected)
        image = dataset / "images_detectron2" / split / f"{name}.jpg"
        assert image.read_bytes() == (dataset / "images" / f"{name}.jpg").read_bytes()
    assert "train: wrote 1 images" in capsys.readouterr().out


def test_prepare_coco_stuff_10k_rejects_an_unknown_class_list(tmp_path):
    script = load_script("prepare_coco_stuff_10k_sem_seg")
    mat_file = tmp_path / "odd.mat"
    save_stuff_10k_mat(str(mat_file), [[0, 1]], 50)
    with pytest.raises(ValueError, match="odd.mat: 50 class names"):
        script.convert_annotation(str(mat_file), str(tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()


def test_prepare_coco_stuff_10k_names_missing_files(tmp_path):
    script = load_script("prepare_coco_stuff_10k_sem_seg")
    with pytest.raises(FileNotFoundError, match="imageLists/train.txt"):
        script.main(["--root", str(tmp_path)])
    dataset = tmp_path / "coco" / "coco_stuff_10k"
    (dataset / "imageLists").mkdir(parents=True)
    (dataset / "imageLists" / "train.txt").write_text("COCO_1\n")
    save_jpg(str(dataset / "images" / "COCO_1.jpg"), 2, 2)
    with pytest.raises(FileNotFoundError, match=r"annotations/COCO_1.mat \(listed in imageLists/train.txt\)"):
        script.main(["--root", str(tmp_path)])
