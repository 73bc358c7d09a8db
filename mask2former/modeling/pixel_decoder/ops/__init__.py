"""Multi-scale deformable attention (Deformable DETR) used by the MSDeformAttn pixel decoder.

Three implementations compute the same thing: the compiled CUDA kernel, the compiled CPU kernel
(both built by ``make.sh``) and a pure-PyTorch path. Importing never needs a compiled kernel; see
``backend.py`` for how one is chosen.
"""
