"""Cityscapes semantic and instance evaluation through cityscapesscripts, on NumPy 2."""
import importlib
import json
import os
import types

import numpy as np

from detectron2.evaluation import CityscapesInstanceEvaluator as _D2CityscapesInstanceEvaluator
from detectron2.evaluation import CityscapesSemSegEvaluator as _D2CityscapesSemSegEvaluator

__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]


class _NumPyWithIn1d(types.ModuleType):
    """NumPy, plus ``in1d`` (removed in NumPy 2.4) which cityscapesscripts 2.3.0 still calls."""

    def __init__(self):
        super().__init__("numpy")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


def _import_cityscapes_script(module_name):
    """Import a cityscapesscripts evaluation module, giving it ``np.in1d`` where NumPy lacks it.

    Only that module's ``np`` name is redirected; NumPy itself is left alone.
    """
    module = importlib.import_module(module_name)
    if not hasattr(np, "in1d") and not isinstance(module.np, _NumPyWithIn1d):
        module.np = _NumPyWithIn1d()
    return module


def _json_default(value):
    # NumPy 2 returns NumPy scalars where NumPy 1 returned Python ints (np.count_nonzero).
    if isinstance(value, np.generic):
        return value.item()
    return value.__dict__


def _json_writer_into(folder):
    """cityscapesscripts' ``writeDict2JSON``, accepting NumPy scalars and writing relative file
    names into ``folder`` (the instance evaluation dumps "matches.json" into the working directory
    otherwise)."""

    def write_dict_to_json(dictionary, file_name):
        with open(os.path.join(folder, file_name), "w") as f:
            json.dump(dictionary, f, default=_json_default, sort_keys=True, indent=4)

    return write_dict_to_json


def _evaluate_with(evaluator, parent_evaluate, module_name):
    module = _import_cityscapes_script(module_name)
    module.writeDict2JSON = _json_writer_into(evaluator._temp_dir)
    try:
        return parent_evaluate()
    except SystemExit as stop:
        # cityscapesscripts reports problems (a ground-truth image without a prediction, say:
        # evaluating a subset of the images under gt_dir) by printing them and exiting.
        raise RuntimeError(
            f"cityscapesscripts ({module_name}) stopped the evaluation of "
            f"'{evaluator._metadata.name}' (gt_dir={evaluator._metadata.gt_dir}); its message "
            "is printed above. Every ground-truth image under gt_dir needs a prediction."
        ) from stop


class CityscapesSemSegEvaluator(_D2CityscapesSemSegEvaluator):
    """Detectron2's :class:`~detectron2.evaluation.CityscapesSemSegEvaluator` (IoU, iIoU and
    their category-level versions, by cityscapesscripts), working on NumPy 2."""

    def evaluate(self):
        return _evaluate_with(
            self, super().evaluate, "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"
        )


class CityscapesInstanceEvaluator(_D2CityscapesInstanceEvaluator):
    """Detectron2's :class:`~detectron2.evaluation.CityscapesInstanceEvaluator` (mask AP and AP50,
    by cityscapesscripts), working on NumPy 2."""

    def evaluate(self):
        return _evaluate_with(
            self, super().evaluate, "cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling"
        )
