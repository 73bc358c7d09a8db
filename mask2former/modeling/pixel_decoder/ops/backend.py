"""Chooses the implementation of multi-scale deformable attention that runs for a given device.

``auto`` (the default) takes the compiled CUDA kernel for CUDA tensors and the compiled CPU kernel for
CPU tensors, and falls back to the pure-PyTorch path when the kernel was not built (one warning).
``cuda``, ``cpu`` and ``pytorch`` force one implementation, and fail clearly when it cannot run; tests
and benchmarks use them to compare the paths. The environment variable ``MASK2FORMER_MSDA_BACKEND``
sets the choice for a whole process; :func:`set_backend` / :func:`use_backend` override it.
"""
import contextlib
import importlib
import logging
import os
import threading

import torch

__all__ = [
    "BACKEND_ENV_VAR",
    "BACKENDS",
    "KERNEL_MODULE",
    "available_backends",
    "get_backend",
    "has_cpu_kernel",
    "has_cuda_kernel",
    "kernel_load_error",
    "load_kernels",
    "select_backend",
    "set_backend",
    "use_backend",
]

BACKEND_ENV_VAR = "MASK2FORMER_MSDA_BACKEND"
BACKENDS = ("auto", "cuda", "cpu", "pytorch")
# The compiled extension built by make.sh. It deliberately does not reuse upstream's module name
# (MultiScaleDeformableAttention) so that an upstream build in the same environment never shadows it.
KERNEL_MODULE = "mask2former_msda_kernels"
BUILD_HINT = "build it with `cd mask2former/modeling/pixel_decoder/ops && sh make.sh`"

_logger = logging.getLogger(__name__)
_lock = threading.Lock()
_forced_backend = None
_kernels = None
_kernel_error = None
_kernels_loaded = False
_reported = set()


def load_kernels():
    """The compiled extension module, or None when it is not installed or cannot be loaded."""
    global _kernels, _kernel_error, _kernels_loaded
    if not _kernels_loaded:
        with _lock:
            if not _kernels_loaded:
                try:
                    _kernels = importlib.import_module(KERNEL_MODULE)
                # An extension built against another torch fails with OSError (undefined symbol),
                # not ImportError; either way the PyTorch path must keep working.
                except Exception as e:  # noqa: BLE001
                    _kernel_error = "{}: {}".format(type(e).__name__, e)
                _kernels_loaded = True
    return _kernels


def kernel_load_error():
    """Why the compiled extension could not be loaded (None if it loaded)."""
    load_kernels()
    return _kernel_error


def has_cpu_kernel():
    return load_kernels() is not None


def has_cuda_kernel():
    kernels = load_kernels()
    return kernels is not None and bool(kernels.with_cuda())


def available_backends():
    """The implementations this process can run, in preference order."""
    names = []
    if has_cuda_kernel() and torch.cuda.is_available():
        names.append("cuda")
    if has_cpu_kernel():
        names.append("cpu")
    names.append("pytorch")
    return names


def _check_name(name, source):
    if name not in BACKENDS:
        raise ValueError(
            "{} is {!r}; the multi-scale deformable attention backend must be one of {}".format(
                source, name, ", ".join(BACKENDS)
            )
        )
    return name


def get_backend():
    """The requested backend: set_backend's value if set, else the environment variable, else auto."""
    if _forced_backend is not None:
        return _forced_backend
    name = os.environ.get(BACKEND_ENV_VAR, "").strip().lower() or "auto"
    return _check_name(name, "the environment variable {}".format(BACKEND_ENV_VAR))


def set_backend(name):
    """Force a backend for this process ("auto", "cuda", "cpu", "pytorch"); None returns to the
    environment variable's choice. Returns the previous override."""
    global _forced_backend
    if name is not None:
        _check_name(name, "set_backend's argument")
    previous = _forced_backend
    _forced_backend = name
    return previous


@contextlib.contextmanager
def use_backend(name):
    """Context manager form of :func:`set_backend`."""
    previous = set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _report_once(key, level, message):
    if key not in _reported:
        _reported.add(key)
        _logger.log(level, message)


def select_backend(device):
    """The implementation ("cuda", "cpu" or "pytorch") that runs for tensors on ``device``."""
    device = torch.device(device)
    requested = get_backend()
    if requested == "auto":
        if device.type == "cuda" and has_cuda_kernel():
            chosen = "cuda"
        elif device.type == "cpu" and has_cpu_kernel():
            chosen = "cpu"
        else:
            chosen = "pytorch"
            if device.type in ("cpu", "cuda"):
                reason = kernel_load_error() or "it was built without CUDA support"
                _report_once(
                    ("missing", device.type),
                    logging.WARNING,
                    "Multi-scale deformable attention: no compiled {} kernel ({}); using the slower "
                    "pure-PyTorch path. To get the kernel, {}.".format(device.type.upper(), reason, BUILD_HINT),
                )
    elif requested == "pytorch":
        chosen = "pytorch"
    else:
        if device.type != requested:
            raise RuntimeError(
                "Multi-scale deformable attention is forced to the {} kernel (set_backend or {}), but its "
                "inputs are on {}".format(requested, BACKEND_ENV_VAR, device)
            )
        available = has_cuda_kernel() if requested == "cuda" else has_cpu_kernel()
        if not available:
            reason = kernel_load_error() or "the extension was built without CUDA support"
            raise RuntimeError(
                "Multi-scale deformable attention is forced to the {} kernel (set_backend or {}), but that "
                "kernel is not available ({}); {}.".format(requested, BACKEND_ENV_VAR, reason, BUILD_HINT)
            )
        chosen = requested
    _report_once(
        ("using", device.type, chosen),
        logging.INFO,
        "Multi-scale deformable attention on {}: using the {} (requested: {}).".format(
            device.type, "pure-PyTorch path" if chosen == "pytorch" else chosen.upper() + " kernel", requested
        ),
    )
    return chosen


def kernels_for(device):
    """The compiled extension if it can run on ``device``; otherwise a clear RuntimeError."""
    device = torch.device(device)
    kernels = load_kernels()
    if kernels is None:
        raise RuntimeError(
            "MSDeformAttnFunction needs the compiled multi-scale deformable attention extension, which "
            "cannot be loaded ({}); {}, or call ms_deform_attn(), which falls back to the PyTorch "
            "path.".format(_kernel_error, BUILD_HINT)
        )
    if device.type == "cuda" and not kernels.with_cuda():
        raise RuntimeError(
            "MSDeformAttnFunction got CUDA tensors but the compiled extension was built without CUDA; "
            "rebuild it on a machine with CUDA (or FORCE_CUDA=1), or call ms_deform_attn(), which falls "
            "back to the PyTorch path."
        )
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError("MSDeformAttnFunction supports CPU and CUDA tensors, not {}".format(device))
    return kernels
