"""The environment: Mask2Former imports, Detectron2 works on this stack, multi-process launch works."""
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from mask2former.utils import detectron2_compat
from mask2former.utils.launch import launch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, **kwargs
    )


def test_import_mask2former_in_a_fresh_interpreter():
    result = _run_python("import mask2former")
    assert result.returncode == 0, result.stderr


DETECTRON2_SUBPACKAGES = [
    "detectron2.layers",
    "detectron2.data",
    "detectron2.evaluation",
    "detectron2.engine",
    "detectron2.projects.deeplab",
    "detectron2.projects.point_rend",
]


def test_detectron2_subpackages_import_after_mask2former():
    code = (
        "import importlib, traceback, mask2former\n"
        f"for name in {DETECTRON2_SUBPACKAGES!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        print('FAILED', name); traceback.print_exc()\n"
    )
    result = _run_python(code)
    assert result.returncode == 0 and "FAILED" not in result.stdout, result.stdout + result.stderr


def test_train_net_help():
    result = subprocess.run(
        [sys.executable, "train_net.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--config-file", "--eval-only", "--resume", "--num-gpus", "--num-machines", "--dist-url"):
        assert flag in result.stdout


@pytest.mark.skipif(detectron2_compat.has_compiled_ops(), reason="this Detectron2 has its compiled ops")
def test_op_that_needs_compiled_extension_raises_a_clear_error():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(detectron2_compat.MissingCompiledOpError, match="box_iou_rotated") as info:
        pairwise_iou_rotated(boxes, boxes)
    assert "INSTALL.md" in str(info.value)


def test_collect_env_describes_the_build():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info


def test_sem_seg_evaluator_uses_numpy_aliases_that_numpy2_removed():
    """SemSegEvaluator (v0.6) calls np.int / np.float; the confusion matrix below is worked out by hand."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator
    from PIL import Image

    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], dtype=np.uint8)
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    name = "foundation_sem_seg_alias_check"

    with tempfile.TemporaryDirectory() as tmp:
        gt_file = os.path.join(tmp, "gt.png")
        Image.fromarray(gt).save(gt_file)
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda: [])
            MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg")
        evaluator = SemSegEvaluator(name, distributed=False, output_dir=None)
        evaluator._num_classes = 2
        evaluator.input_file_to_gt_file = {"img.png": gt_file}
        evaluator.reset()
        scores = torch.zeros(2, 2, 4)
        scores.scatter_(0, pred.unsqueeze(0), 1.0)
        evaluator.process([{"file_name": "img.png"}], [{"sem_seg": scores}])
        result = evaluator.evaluate()["sem_seg"]
    # 7 valid pixels (the 255 one is ignored). Class 0: 4 gt, 3 predicted, 3 correct.
    # Class 1: 3 gt, 4 predicted, 3 correct.
    tp = np.array([3, 3])
    gt_count = np.array([4, 3])
    pred_count = np.array([3, 4])
    iou = tp / (gt_count + pred_count - tp)
    assert result["mIoU"] == pytest.approx(100 * iou.mean())
    assert result["pACC"] == pytest.approx(100 * tp.sum() / 7)


def test_extent_transform_default_interpolation_from_pillow_alias():
    """detectron2.data.transforms (v0.6) uses PIL.Image.LINEAR, removed in Pillow 10."""
    from detectron2.data.transforms import ExtentTransform

    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = ExtentTransform(src_rect=(0, 0, 4, 4), output_size=(2, 2)).apply_image(image)
    assert out.shape == (2, 2)


def _all_reduce_worker(result_dir):
    import torch.distributed as dist
    from detectron2.utils import comm

    rank = comm.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    gathered = comm.all_gather({"rank": rank, "local_rank": comm.get_local_rank()})
    with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
        f.write(f"{value.item()} {comm.get_world_size()} {comm.get_local_size()} {dist.get_backend()} ")
        f.write(",".join(str(g["local_rank"]) for g in gathered))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only GLOO route")
def test_two_process_gloo_launch_all_reduces_through_detectron2_comm(tmp_path):
    launch(_all_reduce_worker, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path),))
    for rank in range(2):
        value, world, local_size, backend, local_ranks = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert float(value) == 3.0
        assert (int(world), int(local_size)) == (2, 2)
        assert backend == "gloo"
        assert local_ranks == "0,1"


def test_worker_shutdown_releases_every_process_group_before_interpreter_exit():
    """A GLOO group still alive at interpreter exit aborts the worker about one run in ten."""
    code = """
import weakref
import torch.distributed as dist
from detectron2.utils import comm
from mask2former.utils.launch import _find_free_port, _join_machine_group, _shut_down_process_groups

dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_find_free_port()}", world_size=1, rank=0)
_join_machine_group(comm, 1, 0)
comm.all_gather(0)
groups = [dist.group.WORLD, comm._LOCAL_PROCESS_GROUP]
if hasattr(comm, "_get_global_gloo_group"):
    groups.append(comm._get_global_gloo_group())
refs = [weakref.ref(group) for group in groups]
del groups
_shut_down_process_groups(comm)
alive = [ref() for ref in refs if ref() is not None]
print("alive", len(alive), "initialized", dist.is_initialized())
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-4:] == ["alive", "0", "initialized", "False"]


def test_apply_is_a_no_op_when_nothing_is_missing():
    bool_alias = np.bool
    detectron2_compat._applied = False
    detectron2_compat.apply()
    assert np.bool is bool_alias
    assert np.float is float
