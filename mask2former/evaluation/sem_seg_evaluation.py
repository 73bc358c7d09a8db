"""Semantic segmentation metrics (mIoU, fwIoU, mACC, pACC) with Detectron2's SemSegEvaluator."""
import numpy as np
from PIL import Image

from detectron2.evaluation import SemSegEvaluator as _D2SemSegEvaluator
from detectron2.utils.file_io import PathManager

__all__ = ["SemSegEvaluator"]

_MAX_LISTED_VALUES = 10


class SemSegEvaluator(_D2SemSegEvaluator):
    """Detectron2's :class:`~detectron2.evaluation.SemSegEvaluator`, refusing bad ground truth.

    Detectron2 adds each image to a ``(K+1) x (K+1)`` confusion matrix indexed by
    ``(K+1) * pred + gt``. A ground-truth label >= K that is not the ignore label lands in another
    cell without any error as long as the index stays below ``(K+1)**2`` (a silently wrong mIoU),
    and a ground-truth file whose size differs from the prediction fails with a bare NumPy error.
    Each ground-truth map is therefore checked first; a bad one raises an error naming the file
    and the offending values. The metrics themselves are Detectron2's.
    """

    def process(self, inputs, outputs):
        for input_dict, output in zip(inputs, outputs):
            self._check_ground_truth(input_dict, output)
        super().process(inputs, outputs)

    def _check_ground_truth(self, input_dict, output):
        gt_file = self.input_file_to_gt_file[input_dict["file_name"]]
        with PathManager.open(gt_file, "rb") as f:
            gt = np.array(Image.open(f), dtype=np.int64)
        pred_shape = tuple(output["sem_seg"].shape[-2:])
        problems = []
        if gt.shape != pred_shape:
            problems.append(f"its size {gt.shape} differs from the prediction's {pred_shape}")
        invalid = np.unique(gt[(gt != self._ignore_label) & ((gt < 0) | (gt >= self._num_classes))])
        if invalid.size:
            listed = ", ".join(str(v) for v in invalid[:_MAX_LISTED_VALUES])
            if invalid.size > _MAX_LISTED_VALUES:
                listed += f" and {invalid.size - _MAX_LISTED_VALUES} more"
            problems.append(
                f"it has label values {listed}, outside [0, {self._num_classes}) and not the "
                f"ignore label {self._ignore_label}"
            )
        if problems:
            raise ValueError(
                f"Cannot evaluate the semantic segmentation of '{input_dict['file_name']}' against "
                f"the ground truth '{gt_file}' of '{self._dataset_name}': "
                + "; ".join(problems)
                + "."
            )
