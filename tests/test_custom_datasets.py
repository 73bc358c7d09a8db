"""Custom datasets registered from DATASETS.CUSTOM (config file or command line), without code."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.projects.deeplab import add_deeplab_config

from mask2former import add_maskformer2_config
from mask2former.data import custom, synthetic
from mask2former.data.dataset_mappers import MaskFormerInstanceDatasetMapper, MaskFormerSemanticDatasetMapper


@pytest.fixture
def cleanup():
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        custom._registered_specs.pop(name, None)


def _cfg(*opts):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def make_sem_seg_folder(root, num_images=3, size=(6, 8)):
    """images/<i>.jpg + masks/<i>.png (labels 0, 1, 2 and 255) + classes.yaml; returns the spec."""
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    h, w = size
    for i in range(num_images):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "images" / f"img{i}.jpg")
        labels = np.zeros((h, w), np.uint8)
        labels[:, w // 2 :] = 1 + i % 2
        labels[0, 0] = 255
        Image.fromarray(labels).save(root / "masks" / f"img{i}.png")
    (root / "classes.yaml").write_text(
        "classes:\n  - {name: road, color: [128, 64, 128]}\n  - {name: tree, color: [0, 128, 0]}\n  - car\n"
    )
    return f"type=sem_seg,image_root={root / 'images'},sem_seg_root={root / 'masks'},classes={root / 'classes.yaml'}"


def make_coco_instance(root):
    """Two 6x8 images; a polygon 'cat' and an RLE 'dog' on the first, nothing on the second."""
    os.makedirs(root / "images")
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "images" / name)
    block = np.zeros((6, 8), np.uint8)
    block[2:5, 4:7] = 1
    rle = mask_util.encode(np.asfortranarray(block))
    rle["counts"] = rle["counts"].decode("ascii")
    content = {
        "images": [{"id": 10, "file_name": "a.jpg", "height": 6, "width": 8},
                   {"id": 11, "file_name": "b.jpg", "height": 6, "width": 8}],
        "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0,
             "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]},
            {"id": 2, "image_id": 10, "category_id": 9, "bbox": [4, 2, 3, 3], "area": 9, "iscrowd": 0,
             "segmentation": rle},
        ],
    }
    (root / "train.json").write_text(json.dumps(content))
    return f"type=coco_instance,json_file={root / 'train.json'},image_root={root / 'images'}"


def make_coco_panoptic(root):
    """A 3-image COCO-panoptic dataset (the synthetic generator's output is valid COCO panoptic)."""
    data = synthetic.generate(str(root / "pan"), seed=1, splits={"train": 3})
    return (
        f"type=coco_panoptic,json_file={data}/annotations/panoptic_train.json,image_root={data}/train,"
        f"panoptic_root={data}/panoptic_train,sem_seg_root={data}/panoptic_semseg_train,"
        f"instances_json={data}/annotations/instances_train.json"
    ), data


def test_sem_seg_folder_from_the_command_line(tmp_path, cleanup):
    spec = "name=cli_sem_train," + make_sem_seg_folder(tmp_path)
    cleanup.append("cli_sem_train")
    # Exactly what `train_net.py ... DATASETS.CUSTOM "['name=...']"` gives yacs.
    cfg = _cfg("DATASETS.CUSTOM", str([spec]), "DATASETS.TRAIN", "('cli_sem_train',)")
    assert custom.register_custom_datasets(cfg) == ["cli_sem_train"]

    records = DatasetCatalog.get("cli_sem_train")
    assert [os.path.basename(r["file_name"]) for r in records] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert [os.path.basename(r["sem_seg_file_name"]) for r in records] == ["img0.png", "img1.png", "img2.png"]
    meta = MetadataCatalog.get("cli_sem_train")
    assert meta.stuff_classes == ["road", "tree", "car"]
    assert meta.stuff_colors[:2] == [[128, 64, 128], [0, 128, 0]] and len(meta.stuff_colors[2]) == 3
    assert (meta.evaluator_type, meta.ignore_label) == ("sem_seg", 255)

    out = MaskFormerSemanticDatasetMapper(cfg, True)(records[1])
    assert out["instances"].gt_classes.tolist() == [0, 2]


def test_all_three_kinds_from_a_config_file(tmp_path, cleanup):
    sem = "name=yaml_sem," + make_sem_seg_folder(tmp_path / "sem")
    ins = "name=yaml_ins," + make_coco_instance(tmp_path / "ins")
    pan, _ = make_coco_panoptic(tmp_path / "pan")
    pan = "name=yaml_pan," + pan
    cleanup += ["yaml_sem", "yaml_ins", "yaml_pan"]
    config = tmp_path / "config.yaml"
    config.write_text("DATASETS:\n  CUSTOM:\n" + "".join(f"    - \"{s}\"\n" for s in (sem, ins, pan)))
    cfg = _cfg()
    cfg.merge_from_file(str(config))
    assert custom.register_custom_datasets(cfg) == ["yaml_sem", "yaml_ins", "yaml_pan"]
    assert MetadataCatalog.get("yaml_sem").evaluator_type == "sem_seg"
    assert MetadataCatalog.get("yaml_ins").evaluator_type == "coco"
    assert MetadataCatalog.get("yaml_pan").evaluator_type == "coco_panoptic_seg"


def test_coco_instance_dataset_maps_category_ids_and_feeds_the_mapper(tmp_path, cleanup):
    cleanup.append("my_instances")
    custom.register_custom_dataset("name=my_instances," + make_coco_instance(tmp_path))
    meta = MetadataCatalog.get("my_instances")
    assert meta.thing_classes == ["cat", "dog"]  # sorted by dataset id: 5, 9
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 9: 1}
    assert meta.json_file == str(tmp_path / "train.json")
    records = DatasetCatalog.get("my_instances")
    assert len(records) == 2
    first = next(r for r in records if r["image_id"] == 10)
    assert sorted(a["category_id"] for a in first["annotations"]) == [0, 1]
    mapper = MaskFormerInstanceDatasetMapper(True, augmentations=[], image_format="RGB", size_divisibility=-1)
    instances = mapper(first)["instances"]
    dog = instances.gt_masks[instances.gt_classes.tolist().index(1)].numpy()
    expected = np.zeros((6, 8), bool)
    expected[2:5, 4:7] = True
    np.testing.assert_array_equal(dog, expected)


def test_coco_panoptic_dataset_records_and_metadata(tmp_path, cleanup):
    spec, data = make_coco_panoptic(tmp_path)
    cleanup.append("my_panoptic")
    custom.register_custom_dataset("name=my_panoptic," + spec)
    meta = MetadataCatalog.get("my_panoptic")
    assert meta.stuff_classes == [c["name"] for c in synthetic.SYNTHETIC_CATEGORIES]
    assert meta.thing_classes == ["disc", "box", "triangle", "star"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
    assert meta.json_file.endswith("instances_train.json") and meta.sem_seg_root.endswith("panoptic_semseg_train")
    with open(os.path.join(data, "annotations", "panoptic_train.json")) as f:
        annotations = {a["image_id"]: a for a in json.load(f)["annotations"]}
    contiguous = {c["id"]: i for i, c in enumerate(synthetic.SYNTHETIC_CATEGORIES)}
    records = DatasetCatalog.get("my_panoptic")
    assert len(records) == 3
    for record in records:
        source = annotations[record["image_id"]]
        assert record["pan_seg_file_name"] == os.path.join(data, "panoptic_train", source["file_name"])
        assert os.path.isfile(record["file_name"]) and os.path.isfile(record["sem_seg_file_name"])
        assert [s["category_id"] for s in record["segments_info"]] == [
            contiguous[s["category_id"]] for s in source["segments_info"]
        ]
        assert [s["isthing"] for s in record["segments_info"]] == [s["category_id"] < 10 for s in source["segments_info"]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name=x,type=voc,image_root=a", "'type' must be one of"),
        ("name=x,type=sem_seg,image_root=a,sem_seg_root=b", r"missing required key\(s\) \['classes'\]"),
        ("name=x,type=coco_instance,json_file=a,image_root=b,panoptic_root=c", r"unknown key\(s\) \['panoptic_root'\]"),
        ("name=x,type=coco_instance,json_file=a image_root=b", "missing required"),
        ("name=x,type=coco_instance,json_file=a,json_file=b,image_root=c", "given twice"),
        ("name=x,type=coco_instance,json_file=a,image_root=b,validate=maybe", "validate must be true or false"),
        ("name=x,type=coco_instance,json_file", "not of the form key=value"),
    ],
)
def test_bad_specs_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        custom.parse_dataset_spec(text)


def test_class_files_json_list_and_bad_colour(tmp_path):
    names_only = tmp_path / "names.json"
    names_only.write_text(json.dumps(["sky", "sea"]))
    names, colors = custom.read_class_file(str(names_only))
    assert names == ["sky", "sea"] and len(colors) == 2 and colors[0] != colors[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: sky, color: [0, 300, 0]}\n")
    with pytest.raises(ValueError, match="'sky' has an invalid color"):
        custom.read_class_file(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        custom.read_class_file(str(tmp_path / "missing.yaml"))


def test_registering_again_is_harmless_but_a_name_clash_is_an_error(tmp_path, cleanup):
    spec = "name=twice," + make_sem_seg_folder(tmp_path / "a")
    cleanup.append("twice")
    cfg = _cfg("DATASETS.CUSTOM", str([spec]))
    custom.register_custom_datasets(cfg)
    custom.register_custom_datasets(cfg)  # e.g. train_net.py's setup() in each launched process
    other = "name=twice," + make_sem_seg_folder(tmp_path / "b")
    with pytest.raises(ValueError, match="'twice'.*already registered"):
        custom.register_custom_datasets(_cfg("DATASETS.CUSTOM", str([other])))
    with pytest.raises(ValueError, match="already registered"):
        custom.register_custom_dataset("name=synthetic_sem_seg_val," + make_sem_seg_folder(tmp_path / "c"))
