"""Mask2FormerCheckpointer: complete reports, errors before any copy, backbone-only initialisation."""
import os
import pickle

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from mask2former.utils.checkpoint import CheckpointMismatchError, Mask2FormerCheckpointer, load_checkpoint

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_swin_panoptic")


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.norm = FrozenBatchNorm2d(4)
        self.layers = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 8))


class Head(nn.Module):
    def __init__(self, num_classes=5, num_queries=4):
        super().__init__()
        self.class_embed = nn.Linear(8, num_classes + 1)
        self.mask_embed = nn.Linear(8, 8)
        self.query_feat = nn.Embedding(num_queries, 8)


class TinyModel(nn.Module):
    def __init__(self, num_classes=5, num_queries=4):
        super().__init__()
        self.backbone = Backbone()
        self.sem_seg_head = Head(num_classes, num_queries)
        self.register_buffer("empty_weight", torch.ones(num_classes + 1))
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), False)


def fresh(seed, num_classes=5, num_queries=4):
    torch.manual_seed(seed)
    return TinyModel(num_classes, num_queries)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def save_pth(tmp_path, state, name="model.pth"):
    path = str(tmp_path / name)
    torch.save({"model": state, "iteration": 7}, path)
    return path


def test_full_checkpoint_round_trip_pth_and_model_zoo_pkl(tmp_path):
    source = fresh(0)
    target = fresh(1)
    report = load_checkpoint(target, save_pth(tmp_path, source.state_dict()))
    assert_same_state(source, target)
    assert report.kind == "full" and not (report.missing or report.unexpected or report.mis_shaped)

    pkl = str(tmp_path / "model_final.pkl")
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "test"}, f)
    target = fresh(2)
    load_checkpoint(target, pkl)
    assert_same_state(source, target)


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda sd: sd.pop("sem_seg_head.mask_embed.bias"), "missing: sem_seg_head.mask_embed.bias"),
        (
            lambda sd: sd.update({"sem_seg_head.extra.weight": torch.zeros(2)}),
            "unexpected: sem_seg_head.extra.weight",
        ),
        (
            lambda sd: sd.update({"backbone.stem.weight": torch.zeros(4, 3, 5, 5)}),
            "mis-shaped: backbone.stem.weight",
        ),
    ],
)
def test_mismatching_full_checkpoint_is_refused_and_nothing_is_loaded(tmp_path, edit, expected):
    state = fresh(0).state_dict()
    edit(state)
    target = fresh(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    checkpointer = Mask2FormerCheckpointer(target)
    with pytest.raises(CheckpointMismatchError, match="Nothing was loaded") as info:
        checkpointer.load(save_pth(tmp_path, state))
    assert expected in checkpointer.last_report.problems
    assert expected.split(": ")[1] in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_mis_shaped_report_names_both_shapes(tmp_path):
    state = fresh(0, num_classes=9).state_dict()
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(fresh(1), save_pth(tmp_path, state))
    assert "sem_seg_head.class_embed.weight: checkpoint (10, 8) vs model (6, 8)" in str(info.value)
    assert "empty_weight: checkpoint (10,) vs model (6,)" in str(info.value)


def test_allowed_mismatch_reinitialises_only_the_named_entries(tmp_path):
    source = fresh(0, num_classes=9)
    target = fresh(1)
    kept = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_checkpoint(
        target, save_pth(tmp_path, source.state_dict()), allowed_mismatch=[r"class_embed\.", r"^empty_weight$"]
    )
    assert sorted(report.allowed) == [
        "empty_weight",
        "sem_seg_head.class_embed.bias",
        "sem_seg_head.class_embed.weight",
    ]
    for k, v in target.state_dict().items():
        expected = kept[k] if k in report.allowed else source.state_dict()[k]
        assert torch.equal(v, expected), k


def test_backbone_only_pkl_with_name_heuristics_reports_and_allows_the_head(tmp_path, caplog):
    """A converted ImageNet backbone: names without the 'backbone.' prefix, a classifier left
    over, no FrozenBN running statistics (old format)."""
    source = fresh(0)
    blobs = {
        k[len("backbone."):]: v.numpy()
        for k, v in source.state_dict().items()
        if k.startswith("backbone.") and "running_" not in k
    }
    blobs["head.weight"] = torch.zeros(1000, 8).numpy()
    path = str(tmp_path / "swin_like.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "third_party", "matching_heuristics": True}, f)

    target = fresh(1)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if not k.startswith("backbone.")}
    with caplog.at_level("WARNING"):
        report = load_checkpoint(target, path)
    assert report.kind == "backbone"
    assert report.unexpected == ["head.weight"]
    head_keys = [k for k in head_before if k.startswith("sem_seg_head.")]
    assert sorted(report.missing) == sorted(["empty_weight"] + head_keys)
    assert sorted(report.defaulted) == ["backbone.norm.running_mean", "backbone.norm.running_var"]
    assert "model entries missing from the checkpoint" in caplog.text and "head.weight" in caplog.text
    state = target.state_dict()
    for k, v in source.state_dict().items():
        if k.startswith("backbone.") and "running_" not in k:
            assert torch.equal(state[k], v), k
    assert torch.equal(state["backbone.norm.running_var"], torch.ones(4))
    assert all(torch.equal(state[k], v) for k, v in head_before.items())


def test_backbone_only_mis_shaped_entry_is_an_error(tmp_path):
    blobs = {"stem.weight": torch.zeros(4, 3, 7, 7).numpy(), "stem.bias": torch.zeros(4).numpy()}
    path = str(tmp_path / "bad_backbone.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "third_party", "matching_heuristics": True}, f)
    expected = r"backbone.stem.weight: checkpoint \(4, 3, 7, 7\) vs model \(4, 3, 3, 3\)"
    with pytest.raises(CheckpointMismatchError, match=expected):
        load_checkpoint(fresh(1), path)


def test_checkpoint_matching_nothing_is_an_error(tmp_path):
    path = save_pth(tmp_path, {"something.else": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match="no checkpoint entry matches"):
        load_checkpoint(fresh(1), path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="not found"):
        load_checkpoint(fresh(1), str(tmp_path / "nope.pth"))


def test_golden_state_dict_loads_into_the_full_model(tmp_path):
    from test_golden_postprocess import build_golden_model

    model = build_golden_model()  # skips while the head is not available
    state = torch.load(os.path.join(GOLDEN, "state_dict.pth"), weights_only=True)
    report = load_checkpoint(model, save_pth(tmp_path, state))
    assert report.kind == "full" and len(report.loaded) == 212


def to_caffe2_name(key):
    """detectron2 ResNet name -> name in the MSRA/Caffe2 ImageNet .pkl files (e.g. R-50.pkl)."""
    parts = key.split(".")
    suffix = {"weight": "_w", "bias": "_b"}[parts[-1]]
    if parts[0] == "stem":
        return "conv1_w" if parts[-2] == "conv1" else "res_conv1_bn" + {"_w": "_s", "_b": "_b"}[suffix]
    stage, block, layer = parts[0], parts[1], parts[2]
    branch = "branch1" if layer == "shortcut" else "branch2" + "abc"[int(layer[-1]) - 1]
    name = f"{stage}_{block}_{branch}"
    if parts[3] == "norm":
        return name + "_bn" + {"_w": "_s", "_b": "_b"}[suffix]
    return name + suffix


def test_caffe2_imagenet_resnet_pkl_initialises_the_backbone(tmp_path):
    """The ImageNet R-50.pkl layout (Caffe2 blob names, scale/bias only, an fc1000 classifier)."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    class ResNetModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
            self.sem_seg_head = Head()

    torch.manual_seed(0)
    source = ResNetModel()
    blobs = {
        to_caffe2_name(k[len("backbone."):]): v.numpy()
        for k, v in source.state_dict().items()
        if k.startswith("backbone.") and "running_" not in k
    }
    blobs["fc1000_w"] = torch.zeros(1000, 512).numpy()
    blobs["fc1000_b"] = torch.zeros(1000).numpy()
    path = str(tmp_path / "R-18.pkl")
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)

    torch.manual_seed(1)
    target = ResNetModel()
    report = load_checkpoint(target, path)
    assert report.kind == "backbone"
    assert len(report.unexpected) == 2 and all("fc1000" in k for k in report.unexpected)
    assert report.missing == [k for k in target.state_dict() if k.startswith("sem_seg_head.")]
    assert len(report.defaulted) == 2 * sum(1 for k in report.loaded if k.endswith("norm.weight"))
    state = target.state_dict()
    for k, v in source.state_dict().items():
        if k.startswith("backbone.") and "running_" not in k:
            assert torch.equal(state[k], v), k


@pytest.mark.slow
def test_published_coco_r50_checkpoint_layout_loads_key_for_key(tmp_path):
    """A model-zoo style .pkl with exactly the entries of the official COCO panoptic R50 model
    (tests/data/golden/keys) loads into the model built from our config with nothing to report."""
    import numpy as np
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config

    from mask2former import add_maskformer2_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    keys_file = os.path.join(GOLDEN, "..", "keys", "coco_panoptic_maskformer2_R50_bs16_50ep.txt")
    rng = np.random.RandomState(0)
    blobs = {}
    with open(keys_file) as f:
        for line in f:
            if line.startswith("total_params"):
                continue
            name, shape, dtype = line.rstrip("\n").split("\t")
            shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
            if dtype == "float32":
                blobs[name] = rng.standard_normal(shape).astype(dtype)
            else:
                blobs[name] = np.zeros(shape, dtype)
    path = str(tmp_path / "model_final.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "model zoo"}, f)

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(
        os.path.join(repo, "configs", "coco", "panoptic-segmentation", "maskformer2_R50_bs16_50ep.yaml")
    )
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    report = load_checkpoint(model, path)
    assert report.kind == "full" and len(report.loaded) == len(blobs) == 558
    assert not (report.missing or report.unexpected or report.mis_shaped or report.defaulted)
    state = model.state_dict()
    assert all(np.array_equal(state[k].numpy(), v) for k, v in blobs.items())


# ---------------------------------------------------------------------------------------------
# .pkl checkpoints are plain data: a pickle that names a callable is refused before it runs.
# ---------------------------------------------------------------------------------------------
class _WritesAFile:
    """Unpickling this calls pathlib.Path.touch(path): what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_malicious_pkl_checkpoint_is_refused_without_running_its_code(tmp_path):
    from mask2former.utils.safe_pickle import UnsafePickleError

    victim = tmp_path / "pwned"
    evil = str(tmp_path / "evil.pkl")
    with open(evil, "wb") as f:
        pickle.dump({"model": {"a": _WritesAFile(str(victim))}, "__author__": "x"}, f)
    # The payload works with plain pickle (the hole being closed) ...
    with open(evil, "rb") as f:
        pickle.load(f)
    assert victim.exists()
    victim.unlink()
    # ... and does not with the checkpointer, whose error names the global and the file.
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl references 'pathlib\.Path\.touch'|"
                       r"evil\.pkl references 'pathlib\.Path'"):
        load_checkpoint(fresh(1), evil)
    assert not victim.exists()


def test_safe_unpickler_admits_the_model_zoo_layout_with_python2_and_numpy_globals(tmp_path):
    """Protocol 2 as the published Detectron2 files (OrderedDict, numpy.core.multiarray names of
    NumPy 1, _codecs.encode for bytes), and a NumPy scalar."""
    import collections
    import pickletools

    import numpy as np

    from mask2former.utils.safe_pickle import safe_load_pickle

    source = fresh(0)
    blobs = collections.OrderedDict((k, v.numpy()) for k, v in source.state_dict().items())
    data = {"model": blobs, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True, "step": np.int64(3)}
    raw = pickle.dumps(data, protocol=2)
    # Rename NumPy 2's module to NumPy 1's, as in the files published before NumPy 2.
    raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    globals_used = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert "numpy.core.multiarray _reconstruct" in globals_used and "_codecs encode" in globals_used
    path = tmp_path / "model_final_abc.pkl"
    path.write_bytes(raw)
    loaded = safe_load_pickle(str(path))
    assert loaded["step"] == 3 and list(loaded["model"]) == list(blobs)
    assert all(np.array_equal(loaded["model"][k], v) and loaded["model"][k].dtype == v.dtype for k, v in blobs.items())
    target = fresh(1)
    report = load_checkpoint(target, str(path))
    assert not (report.missing or report.unexpected or report.mis_shaped)
    assert_same_state(source, target)


# ---------------------------------------------------------------------------------------------
# Fine-tuning: entries sized by the class / query counts are re-initialised, nothing else.
# ---------------------------------------------------------------------------------------------
COUNTS = {"classes": 5, "queries": 4}


def test_fine_tuning_with_other_class_and_query_counts_reinitialises_only_what_they_size(tmp_path, caplog):
    import logging

    source = fresh(0, num_classes=80, num_queries=7)
    target = fresh(1)
    initial = {k: v.clone() for k, v in target.state_dict().items()}
    path = save_pth(tmp_path, source.state_dict())
    with caplog.at_level(logging.INFO, logger="mask2former.utils.checkpoint"):
        report = load_checkpoint(target, path, counts=COUNTS)
    sized = ["empty_weight", "sem_seg_head.class_embed.bias", "sem_seg_head.class_embed.weight",
             "sem_seg_head.query_feat.weight"]
    assert sorted(report.reinitialised) == sized
    assert report.count_change == "classes 80 -> 5, queries 7 -> 4"
    for k, v in target.state_dict().items():
        assert torch.equal(v, initial[k] if k in sized else source.state_dict()[k]), k
    lines = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "re-initialised 4 entries (checkpoint vs config: classes 80 -> 5, queries 7 -> 4)" in lines[0]
    assert "sem_seg_head.class_embed.weight" in lines[0]


@pytest.mark.parametrize(
    "edit,counts,expected",
    [
        # Another mis-shaped entry next to the classifier: everything is refused.
        (lambda sd: sd.update({"backbone.stem.weight": torch.zeros(4, 3, 5, 5)}), COUNTS, "backbone.stem.weight"),
        # The counts do not explain the difference (model classes 5 but config says 6).
        (None, {"classes": 6, "queries": 4}, "sem_seg_head.class_embed.weight"),
        # Two different class counts in one checkpoint.
        (lambda sd: sd.update({"empty_weight": torch.ones(12)}), COUNTS, "empty_weight"),
    ],
)
def test_fine_tuning_still_refuses_other_mismatches(tmp_path, edit, counts, expected):
    state = fresh(0, num_classes=9).state_dict()
    if edit:
        edit(state)
    target = fresh(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="Nothing was loaded") as info:
        load_checkpoint(target, save_pth(tmp_path, state), counts=counts)
    assert f"{expected}: checkpoint" in str(info.value) and "MODEL.WEIGHTS_REINIT" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_weights_reinit_keeps_named_entries_even_when_they_fit(tmp_path):
    source = fresh(0)
    target = fresh(1)
    initial = {k: v.clone() for k, v in target.state_dict().items()}
    path = save_pth(tmp_path, source.state_dict())
    report = load_checkpoint(target, path, reinit=["sem_seg_head.mask_embed", "empty_weight"])
    kept = ["empty_weight", "sem_seg_head.mask_embed.bias", "sem_seg_head.mask_embed.weight"]
    assert sorted(report.reinitialised) == kept and report.count_change == ""
    for k, v in target.state_dict().items():
        assert torch.equal(v, initial[k] if k in kept else source.state_dict()[k]), k
    # A mis-shaped backbone entry can be re-initialised deliberately, too.
    state = source.state_dict()
    state["backbone.stem.weight"] = torch.zeros(4, 3, 5, 5)
    load_checkpoint(fresh(1), save_pth(tmp_path, state), reinit=["backbone.stem.weight"])
    # "sem_seg_head.mask" is not a name boundary: a typo is an error, not a silent no-op.
    with pytest.raises(CheckpointMismatchError, match=r"WEIGHTS_REINIT names no entry.*sem_seg_head\.mask'"):
        load_checkpoint(fresh(1), save_pth(tmp_path, state), reinit=["sem_seg_head.mask"])


def test_detectron2_checkpointer_reads_pkl_as_data_too(tmp_path):
    """DefaultPredictor (the demo) loads MODEL.WEIGHTS with Detectron2's own checkpointer."""
    from detectron2.checkpoint import DetectionCheckpointer

    from mask2former.utils.safe_pickle import UnsafePickleError

    victim = tmp_path / "pwned"
    evil = str(tmp_path / "evil.pkl")
    with open(evil, "wb") as f:
        pickle.dump({"model": {"a": _WritesAFile(str(victim))}, "__author__": "x"}, f)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        DetectionCheckpointer(fresh(1)).load(evil)
    assert not victim.exists()
    source, target = fresh(0), fresh(1)
    good = str(tmp_path / "model.pkl")
    with open(good, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "x"}, f)
    DetectionCheckpointer(target).load(good)
    assert_same_state(source, target)


def test_pkl_with_plainly_pickled_torch_tensors_loads_but_not_a_storage_that_runs_code(tmp_path):
    """Backbones converted by tools that pickle tensors as they are (upstream's Swin converter)
    hold torch tensors, whose storages torch serialises with torch.save inside the pickle."""
    from mask2former.utils.safe_pickle import safe_load_pickle

    source = fresh(0)
    path = str(tmp_path / "converted.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": source.state_dict(), "__author__": "third_party", "matching_heuristics": True}, f)
    target = fresh(1)
    load_checkpoint(target, path)
    assert_same_state(source, target)

    # The storage bytes are unpickled as data only as well (torch's own helper would run them).
    import io

    victim = tmp_path / "pwned"
    inner = io.BytesIO()
    pickle.dump(_WritesAFile(str(victim)), inner)

    class StorageLike:
        def __reduce__(self):
            import torch.storage

            return torch.storage._load_from_bytes, (inner.getvalue(),)

    evil = str(tmp_path / "evil_storage.pkl")
    with open(evil, "wb") as f:
        pickle.dump({"model": {"a": StorageLike()}, "__author__": "x"}, f)
    with pytest.raises(Exception, match="pathlib|Unsupported|weights_only|Weights only"):
        safe_load_pickle(evil)
    assert not victim.exists()
