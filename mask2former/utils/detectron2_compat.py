"""Make the Detectron2 in use work on this software stack.

Two Detectron2 installs are supported (see INSTALL.md):

* a full build from Detectron2's git repository, with its compiled ops: nothing here changes it;
* the Python code of Detectron2 v0.6 without its compiled extension (the default route of
  ``scripts/setup.sh``). That code imports ``detectron2._C`` in modules Mask2Former needs, uses
  NumPy aliases removed in NumPy 1.24 and ``PIL.Image.LINEAR`` removed in Pillow 10, and its
  ``launch()`` always asks for NCCL (use :func:`mask2former.utils.launch.launch` instead, which
  picks GLOO on a machine without GPUs).

:func:`apply` bridges the import-time gaps, and only where they exist. It must run before the first
``detectron2`` import that needs them; ``import mask2former`` does it.
"""
import importlib.util
import sys
import types

import numpy as np
from PIL import Image

__all__ = ["apply", "has_compiled_ops", "MissingCompiledOpError"]

_FULL_BUILD_HINT = (
    "This Detectron2 was installed without its compiled ops (detectron2._C). "
    "Mask2Former does not need them; to use `{op}` anyway, install a full build: "
    "python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
    "(see INSTALL.md)."
)

# Aliases removed from NumPy 1.24 (np.bool came back in NumPy 2) that Detectron2 v0.6 still uses.
_NUMPY_ALIASES = {"bool": bool, "int": int, "float": float, "complex": complex, "object": object, "str": str}
# Resampling constants removed in Pillow 10; v0.6 uses Image.LINEAR as a default argument.
_PIL_ALIASES = {"LINEAR": "BILINEAR", "CUBIC": "BICUBIC", "ANTIALIAS": "LANCZOS"}


class MissingCompiledOpError(RuntimeError):
    """Raised when code calls a Detectron2 op that needs the compiled extension."""


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``detectron2._C``: imports succeed, calling any op raises a clear error."""

    # detectron2.utils.collect_env reads these to describe the build; answer instead of failing.
    _BUILD_INFO = {
        "get_compiler_version": "not built (Python-only Detectron2)",
        "get_cuda_version": "not built (Python-only Detectron2)",
    }

    def __init__(self):
        super().__init__("detectron2._C", "Placeholder for Detectron2's missing compiled extension")
        self.__file__ = "<detectron2._C not built>"

    def has_cuda(self):
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._BUILD_INFO:
            return lambda: self._BUILD_INFO[name]

        def missing_op(*args, **kwargs):
            raise MissingCompiledOpError(_FULL_BUILD_HINT.format(op=f"detectron2._C.{name}"))

        missing_op.__name__ = name
        return missing_op


def has_compiled_ops() -> bool:
    """Whether the installed Detectron2 has its compiled extension."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not isinstance(module, _MissingCompiledOps)
    return importlib.util.find_spec("detectron2._C") is not None


def _add_missing_numpy_aliases():
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _add_missing_pil_aliases():
    for name, replacement in _PIL_ALIASES.items():
        if not hasattr(Image, name):
            setattr(Image, name, getattr(Image.Resampling, replacement))


def _stand_in_for_missing_compiled_ops():
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            "Detectron2 is not installed. Run `bash scripts/setup.sh` from the repository root, "
            "or see INSTALL.md for the other ways to install it."
        )
    if "detectron2._C" not in sys.modules and importlib.util.find_spec("detectron2._C") is None:
        import detectron2

        placeholder = _MissingCompiledOps()
        sys.modules["detectron2._C"] = placeholder
        detectron2._C = placeholder


_applied = False


def apply():
    """Bridge the gaps listed in the module docstring; safe to call more than once."""
    global _applied
    if _applied:
        return
    _add_missing_numpy_aliases()
    _add_missing_pil_aliases()
    _stand_in_for_missing_compiled_ops()
    _applied = True
