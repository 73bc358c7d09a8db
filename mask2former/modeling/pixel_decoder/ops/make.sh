#!/usr/bin/env sh
# Builds the multi-scale deformable attention kernels and installs them into the active Python
# environment (run it with that environment's python first on PATH).
#   sh make.sh                 CPU kernel; plus the CUDA kernel when a GPU and CUDA are present
#   FORCE_CUDA=1 sh make.sh    CPU and CUDA kernels without a GPU (set TORCH_CUDA_ARCH_LIST, CUDA_HOME)
# Build files go to build/ and *.egg-info next to this script (both git-ignored).
set -e
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install --disable-pip-version-check --no-build-isolation --no-deps --no-index -v .
"$PYTHON" -c "import torch, mask2former_msda_kernels as k; print('mask2former_msda_kernels installed, CUDA kernel:', k.with_cuda())"
