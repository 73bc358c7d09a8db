"""Dataset mappers on tiny hand-made images whose expected outputs are written out by hand."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.structures import BoxMode

from mask2former import add_maskformer2_config
from mask2former.data.dataset_mappers import (
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    ColorAugSSDTransform,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_train_mapper,
)
from mask2former.data.dataset_mappers.color_augmentation import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
)

H, W = 6, 8


@pytest.fixture
def image_file(tmp_path):
    """A 6x8 RGB image whose red channel is the column index, green the row index."""
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(W)[None, :] * 10
    rgb[..., 1] = np.arange(H)[:, None] * 10
    rgb[..., 2] = 200
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    return str(path), rgb


def _save_png(array, path):
    Image.fromarray(array).save(path)
    return str(path)


# ------------------------------------------------------------------ semantic
def _labels():
    labels = np.full((H, W), 2, dtype=np.uint8)
    labels[:, :3] = 0  # left 3 columns: class 0
    labels[0, :] = 255  # top row: ignored
    return labels


def test_semantic_mapper_pads_with_128_and_ignore_and_builds_one_mask_per_class(image_file, tmp_path):
    path, rgb = image_file
    labels = _labels()
    record = {"file_name": path, "sem_seg_file_name": _save_png(labels, tmp_path / "labels.png"), "height": H, "width": W}
    mapper = MaskFormerSemanticDatasetMapper(
        True, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=4
    )
    out = mapper(record)

    # 6x8 padded to multiples of 4: 8x8; two padded rows at the bottom.
    expected_image = np.full((3, 8, 8), 128, dtype=np.uint8)
    expected_image[:, :H, :W] = rgb.transpose(2, 0, 1)
    assert out["image"].dtype == torch.uint8
    np.testing.assert_array_equal(out["image"].numpy(), expected_image)
    expected_labels = np.full((8, 8), 255)
    expected_labels[:H, :W] = labels
    np.testing.assert_array_equal(out["sem_seg"].numpy(), expected_labels)
    assert out["sem_seg"].dtype == torch.int64

    instances = out["instances"]
    assert instances.image_size == (8, 8)
    assert instances.gt_classes.tolist() == [0, 2]
    class0 = np.zeros((8, 8), bool)
    class0[1:6, :3] = True
    class2 = np.zeros((8, 8), bool)
    class2[1:6, 3:8] = True
    np.testing.assert_array_equal(instances.gt_masks.numpy(), np.stack([class0, class2]))
    assert "sem_seg_file_name" not in out and record["sem_seg_file_name"]  # the input is not modified


def test_semantic_mapper_flip_is_applied_to_image_and_labels_alike(image_file, tmp_path):
    path, rgb = image_file
    labels = _labels()
    record = {"file_name": path, "sem_seg_file_name": _save_png(labels, tmp_path / "labels.png")}
    mapper = MaskFormerSemanticDatasetMapper(
        True, augmentations=[T.RandomFlip(prob=1.0)], image_format="RGB", ignore_label=255, size_divisibility=-1
    )
    out = mapper(record)
    np.testing.assert_array_equal(out["image"].numpy(), rgb[:, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(out["sem_seg"].numpy(), labels[:, ::-1])


def test_semantic_mapper_all_ignored_image_gives_empty_targets(image_file, tmp_path):
    path, _ = image_file
    record = {"file_name": path, "sem_seg_file_name": _save_png(np.full((H, W), 255, np.uint8), tmp_path / "l.png")}
    mapper = MaskFormerSemanticDatasetMapper(
        True, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1
    )
    instances = mapper(record)["instances"]
    assert instances.gt_classes.shape == (0,)
    assert instances.gt_masks.shape == (0, H, W)


def _cfg(**input_options):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.DATASETS.TRAIN = ("synthetic_sem_seg_train",)  # registered on import; its ignore label is 255
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    for key, value in input_options.items():
        node = cfg.INPUT
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def test_semantic_crop_is_retried_until_no_category_dominates(tmp_path):
    # 40x40, left half class 0, right half class 1; 20x20 crops. A crop is accepted only if no
    # class covers 85% of it or more: 8 of the 21 horizontal offsets are refused.
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[:, 20:] = 1
    record = {
        "file_name": _save_png(np.zeros((40, 40, 3), np.uint8), tmp_path / "i.png"),
        "sem_seg_file_name": _save_png(labels, tmp_path / "l.png"),
    }

    def dominant_fractions(max_area):
        cfg = _cfg(**{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": [20, 20],
                      "CROP.SINGLE_CATEGORY_MAX_AREA": max_area})
        mapper = MaskFormerSemanticDatasetMapper(cfg, True)
        fractions = []
        for seed in range(20):
            np.random.seed(seed)
            sem_seg = mapper(record)["sem_seg"].numpy()
            assert sem_seg.shape == (20, 20)
            fractions.append(np.bincount(sem_seg.ravel(), minlength=2).max() / sem_seg.size)
        return np.array(fractions)

    assert (dominant_fractions(0.85) < 0.85).all()
    assert (dominant_fractions(1.0) >= 0.85).any()  # without the constraint such crops do occur


def test_semantic_mapper_rejects_a_record_without_labels_or_for_inference(image_file):
    path, _ = image_file
    mapper = MaskFormerSemanticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1)
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        mapper({"file_name": path})
    inference = MaskFormerSemanticDatasetMapper(False, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1)
    with pytest.raises(ValueError, match="training only"):
        inference({"file_name": path})


# ------------------------------------------------------------------ panoptic
def _panoptic_png(tmp_path):
    """Ids: 0 (void) in row 0, 7 in columns 0-1, 300 (crowd) in columns 2-3, 70000 elsewhere."""
    ids = np.full((H, W), 70000, dtype=np.int64)
    ids[:, :2] = 7
    ids[:, 2:4] = 300
    ids[0, :] = 0
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    segments = [
        {"id": 7, "category_id": 3, "iscrowd": 0, "isthing": True},
        {"id": 300, "category_id": 1, "iscrowd": 1, "isthing": True},
        {"id": 70000, "category_id": 5, "iscrowd": 0, "isthing": False},
    ]
    return _save_png(rgb, tmp_path / "pan.png"), ids, segments


def test_panoptic_mapper_one_mask_per_non_crowd_segment_and_void_padding(image_file, tmp_path):
    path, rgb = image_file
    pan_path, ids, segments = _panoptic_png(tmp_path)
    record = {"file_name": path, "pan_seg_file_name": pan_path, "segments_info": segments}
    mapper = MaskFormerPanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=4)
    out = mapper(record)
    assert out["image"].shape == (3, 8, 8)
    assert "sem_seg" not in out
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [3, 5]
    expected = np.zeros((2, 8, 8), bool)
    expected[0, 1:6, 0:2] = True
    expected[1, 1:6, 4:8] = True
    np.testing.assert_array_equal(instances.gt_masks.numpy(), expected)


def test_panoptic_mapper_drops_segments_the_crop_removes_and_survives_losing_all(image_file, tmp_path):
    path, _ = image_file
    pan_path, _, segments = _panoptic_png(tmp_path)
    record = {"file_name": path, "pan_seg_file_name": pan_path, "segments_info": segments}
    # columns 4-7, rows 1-5: only segment 70000 is left
    crop = T.CropTransform(4, 1, 4, 5)
    out = MaskFormerPanopticDatasetMapper(True, augmentations=[crop], image_format="RGB", ignore_label=255, size_divisibility=-1)(record)
    assert out["instances"].gt_classes.tolist() == [5]
    assert out["instances"].gt_masks.shape == (1, 5, 4) and bool(out["instances"].gt_masks.all())
    # row 0 only: void everywhere, no target at all
    void_crop = T.CropTransform(0, 0, 8, 1)
    out = MaskFormerPanopticDatasetMapper(True, augmentations=[void_crop], image_format="RGB", ignore_label=255, size_divisibility=-1)(record)
    assert out["instances"].gt_classes.shape == (0,)
    assert out["instances"].gt_masks.shape == (0, 1, 8)


def test_panoptic_mapper_requires_a_panoptic_png(image_file):
    path, _ = image_file
    mapper = MaskFormerPanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255, size_divisibility=-1)
    with pytest.raises(ValueError, match="pan_seg_file_name"):
        mapper({"file_name": path, "segments_info": []})


# ------------------------------------------------------------------ instance
def _instance_annotations():
    """A polygon square (rows 1-2, cols 1-2), an RLE block (rows 3-5, cols 5-7), a crowd."""
    rle_mask = np.zeros((H, W), np.uint8)
    rle_mask[3:6, 5:8] = 1
    rle = mask_util.encode(np.asfortranarray(rle_mask))
    return [
        {"bbox": [1, 1, 2, 2], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2,
         "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]], "iscrowd": 0},
        {"bbox": [5, 3, 3, 3], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": rle, "iscrowd": 0},
        {"bbox": [0, 0, 8, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
         "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]], "iscrowd": 1},
    ]


def test_instance_mapper_polygons_and_rle_to_padded_masks(image_file):
    path, _ = image_file
    record = {"file_name": path, "annotations": _instance_annotations(), "height": H, "width": W}
    mapper = MaskFormerInstanceDatasetMapper(True, augmentations=[], image_format="RGB", size_divisibility=4)
    out = mapper(record)
    instances = out["instances"]
    assert out["image"].shape == (3, 8, 8)
    assert instances.gt_classes.tolist() == [2, 0]
    masks = instances.gt_masks.numpy()
    assert masks.shape == (2, 8, 8) and masks.dtype == bool
    # pycocotools' rasterisation of the polygon, independently
    polygon = mask_util.decode(mask_util.merge(mask_util.frPyObjects([[1, 1, 3, 1, 3, 3, 1, 3]], H, W))).astype(bool)
    np.testing.assert_array_equal(masks[0, :H, :W], polygon)
    expected_rle = np.zeros((8, 8), bool)
    expected_rle[3:6, 5:8] = True
    np.testing.assert_array_equal(masks[1], expected_rle)
    assert not masks[:, H:].any()


def test_instance_mapper_crop_losing_every_object_gives_empty_targets(image_file):
    path, _ = image_file
    record = {"file_name": path, "annotations": _instance_annotations()}
    crop = T.CropTransform(0, 4, 3, 2)  # rows 4-5, cols 0-2: no object there
    out = MaskFormerInstanceDatasetMapper(True, augmentations=[crop], image_format="RGB", size_divisibility=-1)(record)
    assert out["instances"].gt_classes.shape == (0,)
    assert out["instances"].gt_masks.shape == (0, 2, 3)


# ------------------------------------------------------------------ large-scale jitter
def test_lsj_instance_mapper_pads_marks_padding_and_gives_tight_boxes(image_file):
    path, rgb = image_file
    record = {"file_name": path, "annotations": _instance_annotations(), "height": H, "width": W}
    mapper = COCOInstanceNewBaselineDatasetMapper(True, tfm_gens=[T.FixedSizeCrop((10, 10))], image_format="RGB")
    out = mapper(record)
    expected_image = np.full((3, 10, 10), 128, np.uint8)
    expected_image[:, :H, :W] = rgb.transpose(2, 0, 1)
    np.testing.assert_array_equal(out["image"].numpy(), expected_image)
    padding = np.ones((10, 10), bool)
    padding[:H, :W] = False
    np.testing.assert_array_equal(out["padding_mask"].numpy(), padding)
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [2, 0]
    assert instances.gt_masks.shape == (2, 10, 10)
    # box of the RLE block rows 3-5, cols 5-7 (x0, y0, x1, y1 with exclusive ends)
    assert instances.gt_boxes.tensor[1].tolist() == [5.0, 3.0, 8.0, 6.0]


def test_lsj_instance_mapper_drops_objects_outside_the_crop(image_file):
    path, _ = image_file
    record = {"file_name": path, "annotations": _instance_annotations()}
    mapper = COCOInstanceNewBaselineDatasetMapper(True, tfm_gens=[T.CropTransform(0, 4, 3, 2)], image_format="RGB")
    instances = mapper(record)["instances"]
    assert len(instances) == 0 and instances.gt_masks.shape == (0, 2, 3)
    assert instances.gt_boxes.tensor.shape == (0, 4)


def test_lsj_panoptic_mapper_segments_boxes_and_inference_mode(image_file, tmp_path):
    path, _ = image_file
    pan_path, _, segments = _panoptic_png(tmp_path)
    record = {"file_name": path, "pan_seg_file_name": pan_path, "segments_info": segments}
    mapper = COCOPanopticNewBaselineDatasetMapper(True, tfm_gens=[T.FixedSizeCrop((8, 8))], image_format="RGB")
    instances = mapper(record)["instances"]
    assert instances.gt_classes.tolist() == [3, 5]
    assert instances.gt_masks.shape == (2, 8, 8)
    assert not instances.gt_masks[:, H:].any()  # padded rows belong to no segment
    assert instances.gt_boxes.tensor.tolist() == [[0.0, 1.0, 2.0, 6.0], [4.0, 1.0, 8.0, 6.0]]
    inference = COCOPanopticNewBaselineDatasetMapper(False, tfm_gens=[], image_format="RGB")
    out = inference(dict(record, annotations=[]))
    assert "instances" not in out and "annotations" not in out and out["image"].shape == (3, H, W)


def test_lsj_augmentations_from_config_give_image_size_squares(image_file):
    path, _ = image_file
    cfg = _cfg(IMAGE_SIZE=16, MIN_SCALE=0.5, MAX_SCALE=2.0, RANDOM_FLIP="horizontal")
    mapper = COCOInstanceNewBaselineDatasetMapper(cfg, True)
    kinds = [type(t).__name__ for t in mapper.tfm_gens]
    assert kinds == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    record = {"file_name": path, "annotations": _instance_annotations()}
    for seed in range(5):
        np.random.seed(seed)
        out = mapper(record)
        assert out["image"].shape == (3, 16, 16)
        assert out["instances"].gt_masks.shape[1:] == (16, 16)


# ------------------------------------------------------------------ building from the config
@pytest.mark.parametrize(
    "name, cls",
    [
        ("mask_former_semantic", MaskFormerSemanticDatasetMapper),
        ("mask_former_panoptic", MaskFormerPanopticDatasetMapper),
        ("mask_former_instance", MaskFormerInstanceDatasetMapper),
        ("coco_instance_lsj", COCOInstanceNewBaselineDatasetMapper),
        ("coco_panoptic_lsj", COCOPanopticNewBaselineDatasetMapper),
    ],
)
def test_build_train_mapper_follows_dataset_mapper_name(name, cls):
    mapper = build_train_mapper(_cfg(DATASET_MAPPER_NAME=name, COLOR_AUG_SSD=True))
    assert type(mapper) is cls
    if name.startswith("mask_former"):
        assert any(isinstance(a, ColorAugSSDTransform) for a in mapper.tfm_gens)


def test_build_train_mapper_rejects_an_unknown_name():
    with pytest.raises(KeyError, match="'detr_panoptic'.*mask_former_semantic"):
        build_train_mapper(_cfg(DATASET_MAPPER_NAME="detr_panoptic"))


# ------------------------------------------------------------------ colour augmentation
def test_colour_operations_on_hand_checked_pixels():
    pixels = np.array([[[10, 100, 250]]], dtype=np.uint8)
    assert adjust_brightness(pixels, 20).tolist() == [[[30, 120, 255]]]
    assert adjust_brightness(pixels, -20).tolist() == [[[0, 80, 230]]]
    assert adjust_contrast(pixels, 1.5).tolist() == [[[15, 150, 255]]]
    red_bgr = np.array([[[0, 0, 255]]], dtype=np.uint8)
    assert adjust_hue(red_bgr, 60).tolist() == [[[0, 255, 0]]]  # 60 OpenCV units = 120 degrees: green
    assert adjust_hue(red_bgr, 120).tolist() == [[[255, 0, 0]]]  # 240 degrees: blue
    assert adjust_saturation(red_bgr, 0.0).tolist() == [[[255, 255, 255]]]  # value 255, no saturation: white


def test_colour_aug_changes_only_the_image_and_is_seeded():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, size=(5, 7)).astype(np.float64)
    transform = ColorAugSSDTransform(img_format="RGB")
    np.testing.assert_array_equal(transform.apply_segmentation(labels), labels)
    np.random.seed(1)
    first = transform.apply_image(image)
    np.random.seed(1)
    assert np.array_equal(transform.apply_image(image), first)
    assert first.shape == image.shape and first.dtype == np.uint8
    outputs = []
    for seed in range(8):
        np.random.seed(seed)
        outputs.append(transform.apply_image(image))
    assert any(not np.array_equal(o, image) for o in outputs)
    # the RGB transform is the BGR transform seen through swapped channels
    bgr = ColorAugSSDTransform(img_format="BGR")
    np.random.seed(3)
    via_rgb = transform.apply_image(image)
    np.random.seed(3)
    via_bgr = bgr.apply_image(np.ascontiguousarray(image[:, :, ::-1]))
    np.testing.assert_array_equal(via_rgb, via_bgr[:, :, ::-1])
    with pytest.raises(ValueError, match="BGR or RGB"):
        ColorAugSSDTransform(img_format="L")
