"""mask2former.utils.cpu_memory: freed large CPU blocks are reused instead of faulted in again."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# Page faults of filling a fresh 100 MB tensor after tensors of the same size were freed.
_PROBE = r"""
import resource, sys, torch
from mask2former.utils.cpu_memory import keep_freed_cpu_memory
applied = keep_freed_cpu_memory()
"""
# Building a CPU model from its config (as every entry point does) is what applies the setting.
_BUILD_MODEL = r"""
import resource, sys, torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.projects.deeplab import add_deeplab_config
from mask2former import add_maskformer2_config
from mask2former.utils import cpu_memory
cfg = get_cfg()
add_deeplab_config(cfg)
add_maskformer2_config(cfg)
cfg.merge_from_file("configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
cfg.MODEL.DEVICE = sys.argv[1]
build_model(cfg)
applied = cpu_memory._applied
"""
_MEASURE = r"""
def faults_of_fill():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(25 * 2**20)
    x.fill_(1.0)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# malloc settles its heap in the first three rounds (measured: two of them fault all 25,600
# pages, which two varies from run to run), then reuses it.
for _ in range(3):
    faults_of_fill()
print(applied, max(faults_of_fill(), faults_of_fill()))
"""


def _probe(preamble=_PROBE, args=(), **env):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full_env.update(env, PYTHONPATH=root + os.pathsep + full_env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", preamble + _MEASURE, *args], cwd=root, env=full_env, capture_output=True, text=True, check=True
    )
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_freed_block_is_reused_without_page_faults():
    applied, faults = _probe()
    assert applied
    # 100 MB is 25,600 pages of 4 KiB: reused memory faults (almost) none of them.
    assert faults < 1000


def test_opt_out_and_user_tuning_leave_malloc_alone():
    for env in ({"MASK2FORMER_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        applied, faults = _probe(**env)
        assert not applied
        assert faults > 20000, env


def test_building_a_cpu_model_applies_it():
    applied, faults = _probe(_BUILD_MODEL, ["cpu"])
    assert applied and faults < 1000
