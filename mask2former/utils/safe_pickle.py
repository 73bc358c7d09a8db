"""Reading ``.pkl`` files without letting them run code.

A pickle names the callables that rebuild its objects, and :func:`pickle.load` imports and calls
whatever it names: a ``.pkl`` "checkpoint" can run any command. The files this project reads
(Detectron2 model-zoo models, Caffe2 ImageNet backbones, converted backbones, dataset indexes)
only hold containers, strings, numbers, NumPy arrays and (in backbones converted by tools that
pickle tensors as they are, such as upstream's) torch tensors, so :func:`safe_load_pickle` admits
the few globals those need and refuses any other one with an error naming it and the file.
"""
import importlib
import io
import pickle

__all__ = ["UnsafePickleError", "safe_load_pickle"]

# (module, name) the published files reference. Arrays pickled by NumPy 1.x name
# numpy.core.multiarray, by NumPy 2.x numpy._core.multiarray; both are admitted and resolved
# to whichever the installed NumPy provides.
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    # Python 3 pickles bytes with protocol < 3 as _codecs.encode(str, "latin1").
    ("_codecs", "encode"),
    # Torch tensors pickled with plain pickle: a tensor around a storage serialised by torch.save.
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "_load_from_bytes"),
}
# NumPy 2 moved numpy.core to numpy._core (the old name warns); NumPy 1 has only numpy.core.
_NUMPY_CORE_NAMES = ("numpy._core.multiarray", "numpy.core.multiarray")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the admitted set; nothing of it was run."""


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self._source} references '{module}.{name}', which is not plain data (admitted: "
                "dicts, lists, tuples, strings, numbers, NumPy arrays and dtypes, torch tensors); refusing to load "
                "it because unpickling it could run code. If you trust the file, convert it to a "
                "state dict of tensors (torch.save) in a separate, trusted session."
            )
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            # Torch's own version unpickles the bytes with weights_only=False, i.e. runs them.
            return _load_storage_from_bytes
        if module in _NUMPY_CORE_NAMES:
            for candidate in _NUMPY_CORE_NAMES:
                try:
                    return getattr(importlib.import_module(candidate), name)
                except ImportError:
                    continue
        return super().find_class(module, name)


def _load_storage_from_bytes(data: bytes):
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def safe_load_pickle(file, source: str = None, encoding: str = "latin1"):
    """Unpickles ``file`` (a path or a binary file object) admitting only plain data.

    ``encoding="latin1"`` reads the strings and NumPy buffers of Python 2 pickles (the Detectron
    and Caffe2 model zoos) as Detectron2 does. Raises :class:`UnsafePickleError` naming the
    offending global and the file.
    """
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "rb") as f:
            return safe_load_pickle(f, source or str(file), encoding)
    source = source or getattr(file, "name", "<pickle>")
    return _DataOnlyUnpickler(file, source, encoding=encoding).load()
