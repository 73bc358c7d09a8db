"""Builds the multi-scale deformable attention kernels (module ``mask2former_msda_kernels``).

The CPU kernel is always built. The CUDA kernel is added when CUDA is usable (a GPU and CUDA_HOME),
or when FORCE_CUDA=1 (compiling on a machine without a GPU; TORCH_CUDA_ARCH_LIST picks the targets).
Use make.sh, which installs the module into the active Python environment.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

NAME = "mask2former_msda_kernels"
HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    # setuptools wants source paths relative to setup.py's folder.
    return sorted(os.path.relpath(path, HERE) for path in glob.glob(os.path.join(HERE, "src", pattern)))


def get_extensions():
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = force_cuda or (torch.cuda.is_available() and CUDA_HOME is not None)
    if with_cuda and CUDA_HOME is None:
        raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to its folder.")

    sources = _sources("vision.cpp") + _sources(os.path.join("cpu", "*.cpp"))
    # -g0: no debug info (the torch headers make it large and slow to write).
    # -fno-wrapv: undoes Python's -fwrapv, under which GCC leaves the kernel's channel loops scalar.
    # -fopenmp: at::parallel_for is a header template that parallelises through OpenMP pragmas.
    extra_compile_args = {"cxx": ["-O3", "-g0", "-fno-wrapv", "-fopenmp"]}
    extension = CppExtension
    define_macros = []
    if with_cuda:
        extension = CUDAExtension
        sources += _sources(os.path.join("cuda", "*.cu"))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3"]
    return [
        extension(
            NAME,
            sources,
            include_dirs=[os.path.join(HERE, "src")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="mask2former-msda-kernels",
    version="1.0",
    description="CPU and CUDA kernels of multi-scale deformable attention for Mask2Former",
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
