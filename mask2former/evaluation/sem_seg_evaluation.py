"""Semantic segmentation metrics (mIoU, fwIoU, mACC, pACC) with Detectron2's SemSegEvaluator."""
import logging
import os
import tempfile

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator as _D2SemSegEvaluator
from detectron2.utils.file_io import PathManager

__all__ = ["SemSegEvaluator", "semantic_from_panoptic"]

logger = logging.getLogger(__name__)

_MAX_LISTED_VALUES = 10


class SemSegEvaluator(_D2SemSegEvaluator):
    """Detectron2's :class:`~detectron2.evaluation.SemSegEvaluator`, refusing bad ground truth.

    Detectron2 adds each image to a ``(K+1) x (K+1)`` confusion matrix indexed by
    ``(K+1) * pred + gt``. A ground-truth label >= K that is not the ignore label lands in another
    cell without any error as long as the index stays below ``(K+1)**2`` (a silently wrong mIoU),
    and a ground-truth file whose size differs from the prediction fails with a bare NumPy error.
    Each ground-truth map is therefore checked first; a bad one raises an error naming the file
    and the offending values. The metrics themselves are Detectron2's.

    A panoptic dataset without semantic PNGs (a custom COCO-panoptic set registered without
    ``sem_seg_root``) is evaluated against semantic maps derived from its panoptic annotation
    (:func:`semantic_from_panoptic`), written once under ``output_dir``.
    """

    def __init__(self, dataset_name, distributed=True, output_dir=None, **kwargs):
        records = DatasetCatalog.get(dataset_name)
        if all("sem_seg_file_name" in record for record in records):
            super().__init__(dataset_name, distributed, output_dir, **kwargs)
            return
        # Detectron2's evaluator reads each record's "sem_seg_file_name": hand it a dataset whose
        # records point to the derived maps, with this dataset's classes.
        derived = _register_semantic_from_panoptic(dataset_name, records, output_dir)
        super().__init__(derived, distributed, output_dir, **kwargs)
        self._dataset_name = dataset_name

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


def semantic_from_panoptic(panoptic_png, segments_info, ignore_label=255):
    """
    The semantic map of a COCO-panoptic annotation: each pixel gets the (contiguous)
    ``category_id`` of its segment; pixels of no listed segment (id 0: unlabeled) get
    ``ignore_label``. Returns an int32 array (H, W).
    """
    with PathManager.open(panoptic_png, "rb") as f:
        rgb = np.asarray(Image.open(f).convert("RGB"), dtype=np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    semantic = np.full(ids.shape, ignore_label, dtype=np.int32)
    for segment in segments_info:
        semantic[ids == segment["id"]] = segment["category_id"]
    return semantic


def _write_png_atomically(labels, path):
    # Every process of a distributed evaluation may write the same file: never leave a partial one.
    image = Image.fromarray(labels.astype(np.uint8) if labels.max(initial=0) <= 255 else labels)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(path))
    os.close(fd)
    image.save(tmp)
    os.replace(tmp, path)


def _register_semantic_from_panoptic(dataset_name, records, output_dir):
    """Register ``<dataset_name>_semantic_from_panoptic``: the records' semantic ground truth,
    derived from their panoptic PNGs where they have none (written when missing or older than the
    panoptic PNG); returns its name."""
    missing = [r for r in records if "sem_seg_file_name" not in r and "pan_seg_file_name" not in r]
    if missing:
        raise ValueError(
            f"Dataset '{dataset_name}' has no semantic ground truth for {missing[0]['file_name']} "
            f"(and {len(missing) - 1} other images): its records have neither 'sem_seg_file_name' nor "
            "a panoptic annotation. Set MODEL.MASK_FORMER.TEST.SEMANTIC_ON False, or give the "
            "dataset semantic PNGs (sem_seg_root)."
        )
    metadata = MetadataCatalog.get(dataset_name)
    ignore_label = metadata.get("ignore_label", 255)
    root = os.path.join(output_dir or tempfile.mkdtemp(), "semantic_from_panoptic", dataset_name)
    os.makedirs(root, exist_ok=True)
    logger.info(
        "Dataset '%s' has no semantic PNGs: evaluating against semantic maps derived from its "
        "panoptic annotation, in %s", dataset_name, root,
    )
    derived_records = []
    for record in records:
        gt_file = record.get("sem_seg_file_name")
        if gt_file is None:
            panoptic_png = record["pan_seg_file_name"]
            gt_file = os.path.join(root, os.path.splitext(os.path.basename(panoptic_png))[0] + ".png")
            if not os.path.isfile(gt_file) or os.path.getmtime(gt_file) < os.path.getmtime(panoptic_png):
                _write_png_atomically(semantic_from_panoptic(panoptic_png, record["segments_info"], ignore_label), gt_file)
        derived_records.append({"file_name": record["file_name"], "sem_seg_file_name": gt_file})

    name = f"{dataset_name}_semantic_from_panoptic"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: derived_records)
    keys = ("stuff_classes", "stuff_colors", "stuff_dataset_id_to_contiguous_id")
    copied = {key: metadata.get(key) for key in keys if metadata.get(key) is not None}
    MetadataCatalog.get(name).set(ignore_label=ignore_label, **copied)
    return name
