"""Reuse of freed CPU memory for the large tensors of segmentation models (Linux, glibc).

A Mask2Former forward at 512x512 makes dozens of 20-200 MB tensors (feature maps, mask logits at
the input size, their gradients). glibc's malloc serves every block above its mmap threshold (at
most 32 MB) with a fresh ``mmap`` and gives it back to the kernel when freed, so the next tensor of
that size faults in every 4 KiB page again: 25,600 page faults and 25-75 ms per 100 MB buffer on
the machines we measure on, a sixth of a CPU inference and of a training iteration. Raising the
mmap and trim thresholds makes malloc keep freed blocks in its heap and hand them out again, as
PyTorch's CUDA caching allocator does on the GPU. The price is that the process keeps (not grows
beyond) its peak memory after a large forward. Numerics are untouched.

``MASK2FORMER_KEEP_FREED_MEMORY=0`` in the environment leaves malloc alone, as does a malloc
tuning of the user's own (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``).
"""
import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["keep_freed_cpu_memory"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap; up to 2 GiB - 1 (mallopt takes a C int) of free memory
# at its top stays mapped.
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = (1 << 31) - 1

_OPT_OUT = "MASK2FORMER_KEEP_FREED_MEMORY"
_USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied = None


def keep_freed_cpu_memory() -> bool:
    """Tells glibc's malloc to keep freed large blocks for reuse (once per process); True when the
    setting is in force, False where it does not apply (not glibc, opted out, user's own tuning)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(_OPT_OUT, "1") == "0" or any(name in os.environ for name in _USER_TUNING):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if not ok:
        logging.getLogger(__name__).warning("mallopt refused the thresholds; freed CPU memory is returned to the kernel")
    return ok
