"""Compiles the CUDA sources of the multi-scale deformable attention op with nvcc (no GPU needed)
into a temporary folder and loads the result.

Marked `cuda_build` (skipped without nvcc) and `slow`: on the 2-core machine the build takes about
70 s when quiet (1 min 57 s moderately loaded), which CI's budget allows. Run it alone with
    pytest -m cuda_build tests/test_ms_deform_attn_cuda_build.py
Settings: CUDA_HOME (default: /usr/local/cuda, else nvcc's parent folder), TORCH_CUDA_ARCH_LIST
(default 9.0). The pip CUDA headers of the torch wheel (site-packages/nvidia/*/include, e.g. for
cusparse.h) are added to CPATH.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS_DIR = os.path.join(REPO_ROOT, "mask2former", "modeling", "pixel_decoder", "ops")
NVCC = shutil.which("nvcc")

pytestmark = [
    pytest.mark.cuda_build,
    pytest.mark.slow,
    pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: the CUDA sources cannot be compiled here"),
]


def _cuda_home():
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    if os.path.isdir("/usr/local/cuda"):
        return "/usr/local/cuda"
    return os.path.dirname(os.path.dirname(os.path.realpath(NVCC)))


def test_cuda_sources_compile_and_load(tmp_path):
    site_packages = sysconfig.get_paths()["purelib"]
    header_dirs = sorted(glob.glob(os.path.join(site_packages, "nvidia", "*", "include")))
    env = dict(
        os.environ,
        FORCE_CUDA="1",
        CUDA_HOME=_cuda_home(),
        TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
        CPATH=os.pathsep.join(header_dirs + [p for p in os.environ.get("CPATH", "").split(os.pathsep) if p]),
        MAX_JOBS=os.environ.get("MAX_JOBS", "2"),
    )
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
        cwd=OPS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, "CUDA build failed:\n" + (build.stdout + build.stderr)[-6000:]
    assert any(path.endswith(".cu.o") or "ms_deform_attn_cuda" in path for path in _files(tmp_path / "tmp"))

    # The CUDA-enabled module loads without a GPU, reports its CUDA kernel, and its CPU kernel still
    # agrees with the PyTorch path.
    check = (
        "import torch, mask2former_msda_kernels as k\n"
        "from mask2former.modeling.pixel_decoder.ops.functions import ms_deform_attn_core_pytorch\n"
        "assert k.with_cuda()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "shapes = torch.tensor([[3, 5], [2, 2]]); starts = torch.tensor([0, 15])\n"
        "v = torch.randn(2, 19, 2, 4, generator=g, dtype=torch.float64)\n"
        "loc = torch.rand(2, 6, 2, 2, 3, 2, generator=g, dtype=torch.float64)\n"
        "w = torch.rand(2, 6, 2, 2, 3, generator=g, dtype=torch.float64)\n"
        "out = k.ms_deform_attn_forward(v, shapes, starts, loc, w, 1)\n"
        "assert (out - ms_deform_attn_core_pytorch(v, shapes, loc, w)).abs().max() < 1e-10\n"
        "print('ok')\n"
    )
    run_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "lib"), REPO_ROOT]))
    result = subprocess.run([sys.executable, "-c", check], env=run_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


def _files(root):
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.join(folder, name)
