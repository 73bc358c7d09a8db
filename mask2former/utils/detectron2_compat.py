"""Make the Detectron2 in use work on this software stack.

Two Detectron2 installs are supported (see INSTALL.md):

* a full build from Detectron2's git repository, with its compiled ops: nothing here changes it;
* the Python code of Detectron2 v0.6 without its compiled extension (the default route of
  ``scripts/setup.sh``). That code imports ``detectron2._C`` in modules Mask2Former needs, uses
  NumPy aliases removed in NumPy 1.24 and ``PIL.Image.LINEAR`` removed in Pillow 10, and its
  ``launch()`` always asks for NCCL (use :func:`mask2former.utils.launch.launch` instead, which
  picks GLOO on a machine without GPUs).

:func:`apply` bridges the import-time gaps, and only where they exist. ``import mask2former`` calls
it, and it also works when detectron2 was imported first: it installs an import hook (a
``sys.meta_path`` finder) that supplies the placeholder ``detectron2._C`` whenever no real one
exists, so ``from detectron2 import _C`` succeeds whenever it runs. Code that imports
``detectron2.engine``/``.data`` *before* ``mask2former`` (upstream's Python snippet does) needs the
aliases before any of it runs: ``scripts/setup.sh`` therefore also installs a ``.pth`` start-up hook
(:func:`install_startup_hook`) that installs the same finder at interpreter start-up, which applies
the aliases the first time ``detectron2`` is imported. Only the standard library is imported here,
so the start-up hook costs nothing for programs that never import detectron2.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

__all__ = ["apply", "has_compiled_ops", "install_import_hook", "install_startup_hook", "MissingCompiledOpError"]

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


# The start-up hook runs this file under another module name before the package imports it; the
# placeholder it installs must raise the class that ``mask2former.utils.detectron2_compat`` names.
_STARTUP_MODULE = "_mask2former_detectron2_compat"
if __name__ != _STARTUP_MODULE and _STARTUP_MODULE in sys.modules:
    MissingCompiledOpError = sys.modules[_STARTUP_MODULE].MissingCompiledOpError  # noqa: F811


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``detectron2._C``: imports succeed, calling any op raises a clear error."""

    # Recognised by has_compiled_ops() even when this file was loaded twice (the start-up hook loads
    # it under another module name than mask2former's copy, so isinstance() cannot tell).
    _mask2former_placeholder = True

    # detectron2.utils.collect_env reads these to describe the build; answer instead of failing.
    _BUILD_INFO = {
        "get_compiler_version": "not built (Python-only Detectron2)",
        "get_cuda_version": "not built (Python-only Detectron2)",
    }

    def __init__(self, name="detectron2._C"):
        super().__init__(name, "Placeholder for Detectron2's missing compiled extension")
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


class _Detectron2CompatFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """
    Import hook, first on ``sys.meta_path``: adds the NumPy/Pillow aliases just before
    ``detectron2`` itself is imported, and supplies the placeholder for ``detectron2._C`` when the
    normal import machinery finds no compiled extension. Every other import is left alone.
    """

    _mask2former_detectron2_finder = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "detectron2":
            _add_missing_numpy_aliases()
            _add_missing_pil_aliases()
        elif fullname == "detectron2._C" and importlib.machinery.PathFinder.find_spec(fullname, path) is None:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return _MissingCompiledOps(spec.name)

    def exec_module(self, module):
        pass


def has_compiled_ops() -> bool:
    """Whether the installed Detectron2 has its compiled extension."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not getattr(module, "_mask2former_placeholder", False)
    spec = importlib.util.find_spec("detectron2._C")
    return spec is not None and not isinstance(spec.loader, _Detectron2CompatFinder)


def _add_missing_numpy_aliases():
    import numpy as np

    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _add_missing_pil_aliases():
    from PIL import Image

    for name, replacement in _PIL_ALIASES.items():
        if not hasattr(Image, name):
            setattr(Image, name, getattr(Image.Resampling, replacement))


def install_import_hook():
    """Put the import hook first on ``sys.meta_path`` (once, whichever copy of this file asks)."""
    if not any(getattr(finder, "_mask2former_detectron2_finder", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Detectron2CompatFinder())


_applied = False


def apply():
    """Bridge the gaps listed in the module docstring; safe to call more than once, before or
    after detectron2 was imported."""
    global _applied
    if _applied:
        return
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            "Detectron2 is not installed. Run `bash scripts/setup.sh` from the repository root, "
            "or see INSTALL.md for the other ways to install it."
        )
    _add_missing_numpy_aliases()
    _add_missing_pil_aliases()
    install_import_hook()
    _applied = True


STARTUP_HOOK_NAME = "mask2former_detectron2_compat.pth"


def install_startup_hook(site_dir):
    """
    Write a ``.pth`` file into ``site_dir`` (a site-packages folder) that runs this file's
    :func:`install_import_hook` when Python starts, so that detectron2 works even when imported
    before mask2former. The hook names this file by its absolute path; if the checkout moves it
    does nothing (rerun ``scripts/setup.sh``). Returns the path of the ``.pth`` file.
    """
    source = os.path.abspath(__file__)
    # Python runs a .pth line that starts with "import"; it must fit on one line and never fail.
    line = (
        "import importlib.util as u, os, sys; f = %r; s = os.path.isfile(f) and "
        "u.spec_from_file_location(%r, f); m = s and u.module_from_spec(s); "
        "s and (sys.modules.setdefault(%r, m), s.loader.exec_module(m), m.install_import_hook())\n"
        % (source, _STARTUP_MODULE, _STARTUP_MODULE)
    )
    path = os.path.join(site_dir, STARTUP_HOOK_NAME)
    with open(path, "w") as f:
        f.write(line)
    return path
