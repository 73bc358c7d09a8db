"""Video data: YouTube-VIS registrations, json loader, clip mapper, bad-input checks, custom ytvis datasets."""
import json
import os

import mask2former  # noqa: F401  isort: skip

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.projects.deeplab import add_deeplab_config

from mask2former import add_maskformer2_config
from mask2former.data.custom import register_custom_dataset, validate_custom_dataset
from mask2former.data.validation import DatasetValidationError
from mask2former_video.config import add_maskformer2_video_config
from mask2former_video.data_video import YTVISDatasetMapper, validate_video_dataset_dicts
from mask2former_video.data_video.dataset_mapper import sample_frame_indices
from mask2former_video.data_video.datasets.ytvis import load_ytvis_json

# Upstream's YouTube-VIS category names in id order (ids 1..40), as listed in
# facebookresearch/Mask2Former mask2former_video/data_video/datasets/ytvis.py.
UPSTREAM_2019 = (
    "person giant_panda lizard parrot skateboard sedan ape dog snake monkey hand rabbit duck cat cow fish "
    "train horse turtle bear motorbike giraffe leopard fox deer owl surfboard airplane truck zebra tiger "
    "elephant snowboard boat shark mouse frog eagle earless_seal tennis_racket"
).split()
UPSTREAM_2021 = (
    "airplane bear bird boat car cat cow deer dog duck earless_seal elephant fish flying_disc fox frog "
    "giant_panda giraffe horse leopard lizard monkey motorbike mouse parrot person rabbit shark skateboard "
    "snake snowboard squirrel surfboard tennis_racket tiger train truck turtle whale zebra"
).split()
# A few of upstream's colours: (year, id) -> RGB.
UPSTREAM_COLORS = {
    (2019, 1): [220, 20, 60], (2019, 2): [0, 82, 0], (2019, 40): [255, 208, 186],
    (2021, 1): [106, 0, 228], (2021, 14): [250, 170, 30], (2021, 39): [0, 228, 0],
}


def test_ytvis_registrations_read_nothing_and_have_upstream_categories():
    for year, names in ((2019, UPSTREAM_2019), (2021, UPSTREAM_2021)):
        for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
            name = f"ytvis_{year}_{split}"
            assert name in DatasetCatalog.list()
            meta = MetadataCatalog.get(name)
            assert meta.thing_classes == names
            assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(40)}
            assert meta.evaluator_type == "ytvis"
            assert meta.json_file.endswith(os.path.join(f"ytvis_{year}", f"{folder}.json"))
            assert meta.image_root.endswith(os.path.join(f"ytvis_{year}", folder, "JPEGImages"))
        for (y, category_id), color in UPSTREAM_COLORS.items():
            if y == year:
                assert MetadataCatalog.get(f"ytvis_{year}_train").thing_colors[category_id - 1] == color


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def write_tiny_ytvis(root, sizes=((24, 32), (24, 32)), lengths=(4, 3), frame_sizes=None, skip_frame=None):
    """Two videos of coloured frames; video 1 has a track in frames 1-3, video 2 a polygon track."""
    videos, annotations = [], []
    for v, ((h, w), length) in enumerate(zip(sizes, lengths), start=1):
        names = []
        for t in range(length):
            name = f"v{v}/{t:03d}.png"
            names.append(name)
            if skip_frame == (v, t):
                continue
            fh, fw = (frame_sizes or {}).get((v, t), (h, w))
            os.makedirs(os.path.join(root, "frames", f"v{v}"), exist_ok=True)
            image = np.zeros((fh, fw, 3), np.uint8)
            image[:, : fw // 2] = 40 * t  # left half encodes the frame index
            image[:, fw // 2 :] = 200
            Image.fromarray(image).save(os.path.join(root, "frames", name))
        videos.append({"id": v, "file_names": names, "height": h, "width": w, "length": length})
    h, w = sizes[0]
    segs = [None]
    for t in range(1, lengths[0]):
        mask = np.zeros((h, w), bool)
        mask[2 : 8 + t, 3 : 10 + t] = True
        segs.append(_rle(mask))
    annotations.append({"id": 7, "video_id": 1, "category_id": 3, "iscrowd": 0, "segmentations": segs})
    polygon = [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0]]
    annotations.append(
        {"id": 9, "video_id": 2, "category_id": 5, "iscrowd": 0, "segmentations": [polygon] * lengths[1]}
    )
    content = {"videos": videos, "annotations": annotations, "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]}
    json_file = os.path.join(root, "train.json")
    with open(json_file, "w") as f:
        json.dump(content, f)
    return json_file, os.path.join(root, "frames")


def test_loader_builds_per_frame_records(tmp_path):
    json_file, image_root = write_tiny_ytvis(str(tmp_path))
    records = load_ytvis_json(json_file, image_root)
    assert [r["video_id"] for r in records] == [1, 2]
    first = records[0]
    assert first["length"] == 4 and len(first["file_names"]) == 4 and len(first["annotations"]) == 4
    assert first["file_names"][2] == os.path.join(image_root, "v1/002.png")
    assert first["annotations"][0] == []  # null entry: not visible
    obj = first["annotations"][2]
    assert len(obj) == 1 and obj[0]["id"] == 7 and obj[0]["category_id"] == 0  # ids 3, 5 -> 0, 1
    # The box is derived from the RLE: columns 3..11, rows 2..9 in frame 2.
    assert obj[0]["bbox"] == [3.0, 2.0, 9.0, 8.0]
    assert records[1]["annotations"][1][0]["category_id"] == 1


def _report_text(excinfo):
    return str(excinfo.value)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("fewer_segmentations", ["annotation 7 (video 1) has 2 segmentation entries but video 1 has 4 frames", "train.json"]),
        ("empty_video", ["video 2 is empty", "train.json"]),
        ("missing_frame", ["v1/002.png: image does not exist"]),
        ("frame_sizes", ["v2/001.png", "video 2: frames differ in size", "v2/000.png"]),
    ],
)
def test_bad_video_datasets_are_refused_with_clear_errors(tmp_path, case, expected):
    kwargs = {}
    if case == "missing_frame":
        kwargs["skip_frame"] = (1, 2)
    if case == "frame_sizes":
        kwargs["frame_sizes"] = {(2, 1): (30, 32)}
    json_file, image_root = write_tiny_ytvis(str(tmp_path), **kwargs)
    if case in ("fewer_segmentations", "empty_video"):
        with open(json_file) as f:
            content = json.load(f)
        if case == "fewer_segmentations":
            content["annotations"][0]["segmentations"] = content["annotations"][0]["segmentations"][:2]
        else:
            content["videos"][1]["file_names"] = []
            content["videos"][1]["length"] = 0
            content["annotations"] = content["annotations"][:1]
        with open(json_file, "w") as f:
            json.dump(content, f)
    spec = f"name=bad_{case},type=ytvis,json_file={json_file},image_root={image_root}"
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_custom_dataset(spec)
    message = _report_text(excinfo)
    for part in expected:
        assert part in message, message
    assert f"bad_{case}" not in DatasetCatalog.list()


def test_custom_ytvis_dataset_registers_with_json_categories(tmp_path):
    json_file, image_root = write_tiny_ytvis(str(tmp_path))
    name = register_custom_dataset(f"name=tiny_vis_custom,type=ytvis,json_file={json_file},image_root={image_root}")
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["a", "b"] and meta.evaluator_type == "ytvis"
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 5: 1}
    records = DatasetCatalog.get(name)
    assert len(records) == 2
    validate_video_dataset_dicts(records, meta, name)  # a good dataset passes


def test_check_dataset_tool_reports_video_problems(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_dataset", os.path.join(os.path.dirname(__file__), "..", "tools", "check_dataset.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    json_file, image_root = write_tiny_ytvis(str(tmp_path), skip_frame=(2, 0))
    status = tool.main(["--spec", f"name=tool_vis,type=ytvis,json_file={json_file},image_root={image_root}"])
    assert status == 1
    assert "v2/000.png: image does not exist" in capsys.readouterr().err


def test_frame_sampling_stays_within_range():
    rng = np.random.RandomState(0)
    seen_offsets = set()
    for _ in range(500):
        indices = sample_frame_indices(30, 3, 4, rng=rng)
        assert len(indices) == 3 and indices == sorted(indices)
        assert all(0 <= i < 30 for i in indices)
        # Some index is a reference that all others lie within 4 frames of, and differ from.
        assert any(
            all(abs(j - ref) <= 4 for j in indices) and indices.count(ref) >= 1 for ref in indices
        )
        assert max(indices) - min(indices) <= 8
        seen_offsets.add(max(indices) - min(indices))
    assert max(seen_offsets) == 8  # the whole range is used
    assert sample_frame_indices(1, 2, 5, rng=rng) == [0, 0]  # a one-frame video repeats its frame


def _video_cfg(**overrides):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.INPUT.SAMPLING_FRAME_NUM = 3
    cfg.INPUT.SAMPLING_FRAME_RANGE = 3
    cfg.INPUT.MIN_SIZE_TRAIN = (12, 24, 36, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice_by_clip"
    cfg.INPUT.RANDOM_FLIP = "flip_by_clip"
    cfg.INPUT.CROP.ENABLED = False
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_mapper_applies_one_resize_and_flip_to_all_frames_of_a_clip(tmp_path):
    json_file, image_root = write_tiny_ytvis(str(tmp_path))
    record = load_ytvis_json(json_file, image_root)[0]
    mapper = YTVISDatasetMapper(_video_cfg(), is_train=True)
    sizes, flips = set(), set()
    for _ in range(40):
        out = mapper(record)
        frames = out["image"]
        assert len(frames) == 3 and len(out["instances"]) == 3
        shapes = {tuple(f.shape) for f in frames}
        assert len(shapes) == 1  # one size for the clip
        sizes |= shapes
        # The frame-index half is on the left unless flipped (the other half is 200).
        flipped = {bool(f[0, 0, 0] == 200) for f in frames}
        assert len(flipped) == 1  # all frames flipped, or none
        flips |= flipped
        for t, frame in zip(out["frame_idx"], frames):
            assert int(frame[0, 0, -1 if flipped == {True} else 0]) == 40 * t
        # Track 7 in every frame's Instances, -1 where not visible (frame 0).
        for t, instances in zip(out["frame_idx"], out["instances"]):
            assert instances.gt_ids.tolist() == [7 if t > 0 else -1]
            assert instances.gt_masks.tensor.shape[-2:] == frames[0].shape[-2:]
            assert bool(instances.gt_masks.tensor.any()) == (t > 0)
            if t > 0:
                assert instances.gt_classes.tolist() == [0]
                # The mask follows the flip: box of the resized/flipped rectangle.
                mask = instances.gt_masks.tensor[0]
                columns = mask.any(0).nonzero().flatten()
                width = mask.shape[1]
                scale = width / 32
                left = (32 - (10 + t)) * scale if flipped == {True} else 3 * scale
                assert abs(float(columns.min()) - left) <= 1.5
    assert {s[1] for s in sizes} == {12, 24, 36, 48}
    assert flips == {True, False}


def test_mapper_per_frame_sampling_gives_different_sizes_in_a_clip(tmp_path):
    json_file, image_root = write_tiny_ytvis(str(tmp_path))
    record = load_ytvis_json(json_file, image_root)[0]
    mapper = YTVISDatasetMapper(_video_cfg(**{"INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice"}), is_train=True)
    mixed = 0
    for _ in range(20):
        out = mapper(record)
        mixed += len({tuple(f.shape) for f in out["image"]}) > 1
        for frame, instances in zip(out["image"], out["instances"]):
            assert tuple(instances.gt_masks.tensor.shape[-2:]) == tuple(frame.shape[-2:])
    assert mixed  # "choice" draws a size per frame, "choice_by_clip" one per clip (test above)


def test_test_mapper_returns_all_frames_without_annotations(tmp_path):
    json_file, image_root = write_tiny_ytvis(str(tmp_path))
    record = load_ytvis_json(json_file, image_root)[0]
    cfg = _video_cfg(**{"INPUT.MIN_SIZE_TEST": 48, "INPUT.MAX_SIZE_TEST": 1000})
    out = YTVISDatasetMapper(cfg, is_train=False)(record)
    assert len(out["image"]) == 4 and out["frame_idx"] == [0, 1, 2, 3]
    assert all(tuple(f.shape) == (3, 48, 64) for f in out["image"])
    assert "instances" not in out and "annotations" not in out
    assert (out["height"], out["width"], out["video_id"], out["length"]) == (24, 32, 1, 4)


def test_coco_image_becomes_a_pseudo_clip(tmp_path):
    from detectron2.structures import BoxMode

    from mask2former_video.data_video import CocoClipDatasetMapper

    path = str(tmp_path / "image.png")
    Image.fromarray(np.full((24, 32, 3), 100, np.uint8)).save(path)
    square = [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]]
    record = {
        "file_name": path, "image_id": 5, "height": 24, "width": 32,
        "annotations": [
            {"category_id": 1, "bbox": [2, 2, 8, 8], "bbox_mode": BoxMode.XYWH_ABS, "segmentation": square, "iscrowd": 0},
            {"category_id": 0, "bbox": [20, 2, 8, 8], "bbox_mode": BoxMode.XYWH_ABS,
             "segmentation": [[20.0, 2.0, 28.0, 2.0, 28.0, 10.0, 20.0, 10.0]], "iscrowd": 0},
        ],
    }
    cfg = _video_cfg(**{"INPUT.SAMPLING_FRAME_NUM": 3, "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice"})
    out = CocoClipDatasetMapper(cfg, is_train=True)(record)
    assert len(out["image"]) == 3 and len(out["instances"]) == 3 and out["length"] == 3
    for frame, instances in zip(out["image"], out["instances"]):
        assert instances.gt_ids.tolist() == [0, 1] and instances.gt_classes.tolist() == [1, 0]
        assert instances.gt_masks.tensor.shape[-2:] == frame.shape[-2:]
        # Each square covers 8x8 px of the 24-px-high image, scaled with the frame.
        scale = frame.shape[1] / 24
        assert instances.gt_masks.tensor[0].sum().item() == pytest.approx(64 * scale**2, rel=0.35)


def test_training_loader_lists_missing_frames_before_training(tmp_path):
    from mask2former_video.data_video import get_detection_dataset_dicts

    json_file, image_root = write_tiny_ytvis(str(tmp_path), skip_frame=(1, 3))
    name = register_custom_dataset(
        f"name=tiny_vis_missing,type=ytvis,json_file={json_file},image_root={image_root},validate=false"
    )
    with pytest.raises(DatasetValidationError) as excinfo:
        get_detection_dataset_dicts([name])
    assert "v1/003.png: frame of video 1 does not exist" in str(excinfo.value)


def test_evaluator_without_annotations_only_writes_results(tmp_path):
    import torch

    from mask2former_video.data_video import YTVISEvaluator

    json_file, _ = write_tiny_ytvis(str(tmp_path))
    with open(json_file) as f:
        content = json.load(f)
    del content["annotations"]
    with open(json_file, "w") as f:
        json.dump(content, f)
    MetadataCatalog.get("tiny_vis_test_split").set(json_file=json_file, thing_dataset_id_to_contiguous_id={3: 0, 5: 1})
    evaluator = YTVISEvaluator("tiny_vis_test_split", distributed=False, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    masks = torch.zeros(4, 24, 32, dtype=torch.bool)
    masks[1:, :5, :5] = True
    evaluator.process([{"video_id": 1}], {"image_size": (24, 32), "pred_scores": [0.5], "pred_labels": [1], "pred_masks": [masks]})
    assert evaluator.evaluate() == {}
    with open(tmp_path / "out" / "results.json") as f:
        results = json.load(f)
    assert results[0]["category_id"] == 5 and results[0]["video_id"] == 1
    assert mask_util.area(results[0]["segmentations"][0]) == 0 and mask_util.area(results[0]["segmentations"][1]) == 25


def test_annotations_need_their_own_track_id(tmp_path):
    json_file, image_root = write_tiny_ytvis(str(tmp_path))
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"][1]["id"] = 7  # the id of the track in video 1
    with open(json_file, "w") as f:
        json.dump(content, f)
    with pytest.raises(DatasetValidationError) as excinfo:
        load_ytvis_json(json_file, image_root)
    assert "annotation 7 (video 2) reuses a track id" in str(excinfo.value)
