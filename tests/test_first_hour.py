"""What a new user runs into first with train_net.py (issue 10): too few classes for a dataset,
evaluating without a training set, a custom panoptic set without semantic PNGs."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: I001  isort: skip

import json
import os
import subprocess
import sys

import pytest

from mask2former.data.synthetic import SYNTHETIC_CATEGORIES
from mask2former.utils.detectron2_compat import has_compiled_ops as _has_compiled_ops
from test_train_net import REPO_ROOT, SYNTHETIC_CONFIGS, make_args, tiny_data  # noqa: F401  (tiny_data is a fixture)

SYNTHETIC_PANOPTIC = SYNTHETIC_CONFIGS["panoptic"]
TINY_MODEL = [
    "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
]


@pytest.mark.parametrize("split_key", ["DATASETS.TRAIN", "DATASETS.TEST"])
@pytest.mark.parametrize("eval_only", [False, True])
def test_too_few_classes_for_a_dataset_stops_before_any_work(tiny_data, tmp_path, split_key, eval_only):
    # The tiny semantic set has 8 classes; with 7 the 8th label would silently become "no object".
    # Only one split holds the dataset, so each split's check is exercised on its own.
    other = "DATASETS.TEST" if split_key == "DATASETS.TRAIN" else "DATASETS.TRAIN"
    args = make_args(
        "semantic", tmp_path / "out", tiny_data,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7", other, "()",
        flags=["--eval-only"] if eval_only else [],
    )
    split = "training" if split_key == "DATASETS.TRAIN" else "test"
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is 7 but the {split} dataset 'tiny_sem_seg_\w+' has 8 stuff classes"):
        train_net.main(args)
    assert not os.path.exists(tmp_path / "out")


def test_eval_only_without_a_training_set_takes_the_metadata_from_the_test_set(tiny_data, tmp_path):
    # Random weights are enough: the point is that the model is built and evaluated at all.
    args = make_args("panoptic", tmp_path, tiny_data, "DATASETS.TRAIN", "()", flags=["--eval-only"])
    results = train_net.main(args)
    assert {"panoptic_seg", "sem_seg"} <= set(results)
    assert 0 <= results["panoptic_seg"]["PQ"] <= 100


# ---------------------------------------------------------------------------------------------
# Entry points other than train_net: the demo and the Python API (issue 10, item 6).
# ---------------------------------------------------------------------------------------------
def _panoptic_spec(root, name, split="val"):
    return (
        f"name={name},type=coco_panoptic,json_file={root}/annotations/panoptic_{split}.json,"
        f"image_root={root}/{split},panoptic_root={root}/panoptic_{split}"
    )


def test_demo_registers_the_custom_datasets_of_its_config(tiny_data, tmp_path):
    from demo import demo

    # A name no other test registers: the demo itself must register it.
    spec = _panoptic_spec(tiny_data["root"], "demo_only_panoptic_val")
    image = os.path.join(tiny_data["root"], "val", sorted(os.listdir(os.path.join(tiny_data["root"], "val")))[0])
    out = tmp_path / "drawing.png"
    demo.main([
        "--config-file", SYNTHETIC_PANOPTIC, "--input", image, "--output", str(out),
        "--opts", "DATASETS.CUSTOM", repr([spec]), "DATASETS.TRAIN", "()",
        "DATASETS.TEST", "('demo_only_panoptic_val',)", "MODEL.WEIGHTS", "", *TINY_MODEL,
    ])
    assert os.path.getsize(out) > 0
    from detectron2.data import MetadataCatalog

    # The class names drawn are the dataset's (read from its json), not Detectron2's placeholders.
    with open(os.path.join(tiny_data["root"], "annotations", "panoptic_val.json")) as f:
        names = [c["name"] for c in json.load(f)["categories"]]
    assert MetadataCatalog.get("demo_only_panoptic_val").stuff_classes == names


# Upstream's snippet, in the order it imports things: detectron2 (engine, config) first, then
# mask2former; no MODEL.DEVICE although this machine has no GPU; a custom dataset in the config.
UPSTREAM_SNIPPET = """
import site, sys
site.addsitedir(sys.argv[1])  # a site-packages folder holding only what scripts/setup.sh installs
import detectron2
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.projects.deeplab import add_deeplab_config
import numpy as np
from mask2former import add_maskformer2_config
cfg = get_cfg()
add_deeplab_config(cfg)
add_maskformer2_config(cfg)
cfg.merge_from_file(sys.argv[2])
cfg.merge_from_list(eval(sys.argv[3]))
predictor = DefaultPredictor(cfg)
outputs = predictor(np.zeros((48, 64, 3), dtype=np.uint8))
print("device", predictor.model.device, "outputs", sorted(outputs), outputs["sem_seg"].shape[-2:])
print("classes", len(MetadataCatalog.get(cfg.DATASETS.TEST[0]).stuff_classes))
"""


def test_upstream_python_snippet_with_detectron2_imported_first(tiny_data, tmp_path):
    from mask2former.utils.detectron2_compat import STARTUP_HOOK_NAME, install_startup_hook

    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    install_startup_hook(str(site_dir))
    assert os.listdir(site_dir) == [STARTUP_HOOK_NAME]
    spec = _panoptic_spec(tiny_data["root"], "snippet_panoptic_val")
    opts = ["DATASETS.CUSTOM", [spec], "DATASETS.TRAIN", (), "DATASETS.TEST", ("snippet_panoptic_val",),
            "MODEL.WEIGHTS", "", *TINY_MODEL]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", UPSTREAM_SNIPPET, str(site_dir), SYNTHETIC_PANOPTIC, repr(opts)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "device cpu outputs ['instances', 'panoptic_seg', 'sem_seg'] torch.Size([48, 64])" in lines
    assert f"classes {len(SYNTHETIC_CATEGORIES)}" in lines


def test_compiled_ops_placeholder_also_when_detectron2_was_imported_first():
    # A fresh interpreter without the start-up hook: detectron2 (and its config) imported before
    # mask2former; the modules needing detectron2._C import afterwards, and the ops say what is missing.
    code = (
        "import detectron2\nfrom detectron2.config import get_cfg\nimport mask2former\n"
        "from mask2former.utils.detectron2_compat import has_compiled_ops\n"
        "from detectron2.layers import nms_rotated\nimport detectron2.engine\n"
        "print('compiled', has_compiled_ops())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["compiled", str(_has_compiled_ops())]


# ---------------------------------------------------------------------------------------------
# A custom COCO-panoptic set without semantic PNGs, evaluated with SEMANTIC_ON (item 3).
# ---------------------------------------------------------------------------------------------
def test_panoptic_dataset_without_semantic_pngs_trains_and_evaluates_semantics(tiny_data, tmp_path):
    import numpy as np
    from PIL import Image

    root = tiny_data["root"]
    specs = [_panoptic_spec(root, f"nosem_panoptic_{split}", split) for split in ("train", "val")]
    args = make_args(
        "panoptic", tmp_path, tiny_data,
        "DATASETS.CUSTOM", repr(specs),
        "DATASETS.TRAIN", "('nosem_panoptic_train',)", "DATASETS.TEST", "('nosem_panoptic_val',)",
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True", "SOLVER.MAX_ITER", "2",
    )
    results = train_net.main(args)
    assert 0 <= results["sem_seg"]["mIoU"] <= 100 and "panoptic_seg" in results

    # The derived ground truth equals the semantic PNGs the synthetic generator wrote alongside
    # the panoptic ones (which this dataset was not given).
    derived_dir = tmp_path / "inference" / "semantic_from_panoptic" / "nosem_panoptic_val"
    derived = sorted(os.listdir(derived_dir))
    assert derived == sorted(os.listdir(os.path.join(root, "panoptic_semseg_val")))
    for name in derived:
        ours = np.asarray(Image.open(derived_dir / name))
        generated = np.asarray(Image.open(os.path.join(root, "panoptic_semseg_val", name)))
        np.testing.assert_array_equal(ours, generated)


# ---------------------------------------------------------------------------------------------
# Custom-dataset validation: once per version of the dataset, in one process, logged (item 9).
# ---------------------------------------------------------------------------------------------
def _sem_seg_spec(tiny_data, name):
    root = tiny_data["root"]
    return (f"name={name},type=sem_seg,image_root={root}/val,sem_seg_root={root}/panoptic_semseg_val,"
            f"classes={root}/classes.yaml")


def _forget(name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from mask2former.data import custom

    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    custom._registered_specs.pop(name)


def _count_validations(monkeypatch):
    from mask2former.data import custom

    calls = []
    validate = custom.validate_dataset_dicts

    def counting(records, *args, **kwargs):
        calls.append(len(records))
        return validate(records, *args, **kwargs)

    monkeypatch.setattr(custom, "validate_dataset_dicts", counting)
    return calls


def test_an_unchanged_dataset_is_validated_once(tiny_data, tmp_path, monkeypatch):
    from detectron2.config import CfgNode

    from mask2former.data.custom import register_custom_datasets

    monkeypatch.setenv("MASK2FORMER_CACHE", str(tmp_path / "cache"))
    calls = _count_validations(monkeypatch)
    # A copy of the masks, so that touching one does not change the shared tiny dataset.
    import shutil

    masks = tmp_path / "masks"
    shutil.copytree(os.path.join(tiny_data["root"], "panoptic_semseg_val"), masks)
    spec = _sem_seg_spec(tiny_data, "once_sem_seg").replace(f"{tiny_data['root']}/panoptic_semseg_val", str(masks))
    cfg = CfgNode({"DATASETS": CfgNode({"CUSTOM": [spec]})})

    register_custom_datasets(cfg)
    assert calls == [3]
    _forget("once_sem_seg")
    register_custom_datasets(cfg)  # a second start: nothing decoded
    assert calls == [3]
    # A file that changed (here only its modification time) makes it a new version.
    mask = masks / sorted(os.listdir(masks))[0]
    os.utime(mask, ns=(os.stat(mask).st_atime_ns, os.stat(mask).st_mtime_ns + 10**9))
    _forget("once_sem_seg")
    register_custom_datasets(cfg)
    assert calls == [3, 3]


def test_validation_is_logged_to_log_txt(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MASK2FORMER_CACHE", str(tmp_path / "cache"))
    spec = _sem_seg_spec(tiny_data, "logged_sem_seg")
    args = make_args("semantic", tmp_path / "out", tiny_data, "DATASETS.CUSTOM", repr([spec]),
                     "DATASETS.TRAIN", "()", "DATASETS.TEST", "('logged_sem_seg',)")
    train_net.setup(args)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Validating dataset 'logged_sem_seg': checking its 3 images" in log
    assert "Dataset 'logged_sem_seg' passed validation" in log


def _register_in_worker(spec, cache_dir, out_dir):
    os.environ["MASK2FORMER_CACHE"] = cache_dir
    import detectron2.utils.comm as comm
    from detectron2.config import CfgNode

    from mask2former.data import custom

    calls = []
    validate = custom.validate_dataset_dicts
    custom.validate_dataset_dicts = lambda records, *a, **k: (calls.append(len(records)), validate(records, *a, **k))[1]
    custom.register_custom_datasets(CfgNode({"DATASETS": CfgNode({"CUSTOM": [spec]})}))
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}"), "w") as f:
        f.write(str(calls))


@pytest.mark.slow
def test_only_the_main_process_validates(tiny_data, tmp_path):
    from mask2former.utils.launch import launch

    spec = _sem_seg_spec(tiny_data, "two_process_sem_seg")
    launch(_register_in_worker, 2, dist_url="auto", args=(spec, str(tmp_path / "cache"), str(tmp_path)))
    assert (tmp_path / "rank0").read_text() == "[3]"
    assert (tmp_path / "rank1").read_text() == "[]"


# ---------------------------------------------------------------------------------------------
# GETTING_STARTED.md's custom-dataset example works offline (item 7).
# ---------------------------------------------------------------------------------------------
def test_getting_started_custom_dataset_example_downloads_nothing(tmp_path):
    import re

    with open(os.path.join(REPO_ROOT, "GETTING_STARTED.md")) as f:
        text = f.read()
    section = text[text.index("## Custom datasets without writing code"):]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    # The example lives at the repository root; here its _BASE_ is made absolute instead.
    base = re.search(r"^_BASE_: (\S+)", example, re.M).group(1)
    config = tmp_path / "my_config.yaml"
    config.write_text(example.replace(f"_BASE_: {base}", f"_BASE_: {os.path.join(REPO_ROOT, base)}"))
    cfg = train_net.load_config(str(config))
    assert "://" not in cfg.MODEL.WEIGHTS, cfg.MODEL.WEIGHTS
    assert cfg.DATASETS.TRAIN == ("my_train",) and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 5
