"""Panoptic quality of semantic segmentation predictions (each class present in an image is one
segment), as upstream Mask2Former's tools/evaluate_pq_for_semantic_segmentation.py reports for
ADE20K, ADE20K-full and COCO-Stuff-10k, plus the mIoU of the same predictions.

Ground truth and predictions are written as COCO-panoptic PNGs (segment id = class + 1, the ignore
label becoming panopticapi's VOID 0) and scored by panopticapi's own matching, so the numbers obey
its rules: a predicted segment matches the ground-truth segment of its class when their IoU, with
VOID pixels left out of the union, exceeds 0.5.
"""
import json
import logging
import os
import tempfile
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from .panoptic_evaluation import pq_from_files

__all__ = ["evaluate_pq_for_semantic_segmentation", "image_key"]

logger = logging.getLogger(__name__)


def image_key(file_name):
    """Predictions and dataset records are matched by file name, without folder and extension."""
    return os.path.splitext(os.path.basename(file_name))[0]


def _load_predictions(json_file, metadata):
    with PathManager.open(json_file) as f:
        predictions = json.load(f)
    # SemSegEvaluator writes dataset ids when the dataset has a stuff id mapping.
    dataset_to_contiguous = metadata.get("stuff_dataset_id_to_contiguous_id")
    num_classes = len(metadata.stuff_classes)
    by_image = defaultdict(list)
    for prediction in predictions:
        category_id = prediction["category_id"]
        if dataset_to_contiguous is not None:
            if category_id not in dataset_to_contiguous:
                raise ValueError(
                    f"{json_file}: category_id {category_id} of {prediction['file_name']} is not a "
                    f"dataset id of '{metadata.name}' (stuff_dataset_id_to_contiguous_id)."
                )
            category_id = dataset_to_contiguous[category_id]
        elif not 0 <= category_id < num_classes:
            raise ValueError(
                f"{json_file}: category_id {category_id} of {prediction['file_name']} is outside "
                f"[0, {num_classes}) for '{metadata.name}'."
            )
        key = image_key(prediction["file_name"])
        by_image[key].append((category_id, prediction["segmentation"]))
    return by_image


def _read_ground_truth(gt_file, num_classes, ignore_label):
    with PathManager.open(gt_file, "rb") as f:
        gt = np.array(Image.open(f), dtype=np.int64)
    invalid = np.unique(gt[(gt != ignore_label) & ((gt < 0) | (gt >= num_classes))])
    if invalid.size:
        raise ValueError(
            f"{gt_file}: label values {invalid[:10].tolist()} are outside [0, {num_classes}) and "
            f"not the ignore label {ignore_label}."
        )
    return gt


def _rasterise(segments, shape, ignore_label, key):
    """Prediction map; pixels no segment covers stay ``ignore_label`` (no prediction)."""
    pred = np.full(shape, ignore_label, dtype=np.int64)
    for category_id, rle in segments:
        mask = mask_util.decode(rle).astype(bool)
        if mask.shape != shape:
            raise ValueError(
                f"The prediction for '{key}' is {mask.shape[0]}x{mask.shape[1]}, its ground truth "
                f"{shape[0]}x{shape[1]}."
            )
        pred[mask] = category_id
    return pred


def _panoptic_annotation(label_map, ignore_label, image_id, folder):
    from panopticapi.utils import id2rgb

    segment_ids = np.where(label_map == ignore_label, 0, label_map + 1)
    file_name = f"{image_id}.png"
    Image.fromarray(id2rgb(segment_ids)).save(os.path.join(folder, file_name))
    ids, counts = np.unique(segment_ids, return_counts=True)
    segments_info = [
        {"id": int(i), "category_id": int(i) - 1, "iscrowd": 0, "area": int(n)}
        for i, n in zip(ids, counts)
        if i != 0
    ]
    return {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}


def _miou(conf_matrix):
    """Upstream's mIoU: rows are predictions, columns ground truth, the last of each "none"."""
    tp = conf_matrix.diagonal()[:-1].astype(np.float64)
    # Ground-truth pixels left without prediction (last row) still count as ground truth.
    pos_gt = conf_matrix[:, :-1].sum(axis=0).astype(np.float64)
    pos_pred = conf_matrix[:-1, :-1].sum(axis=1).astype(np.float64)
    in_gt = pos_gt > 0
    in_either = (pos_gt + pos_pred) > 0
    iou = tp[in_gt] / (pos_gt + pos_pred - tp)[in_gt]
    return float(iou.sum() / in_either.sum())


def evaluate_pq_for_semantic_segmentation(dataset_name, json_file):
    """PQ/SQ/RQ (all classes are stuff) and mIoU of semantic predictions.

    Args:
        dataset_name: a registered semantic segmentation dataset (``sem_seg_file_name`` records,
            ``stuff_classes`` and ``ignore_label`` metadata).
        json_file: predictions in COCO stuff results format, as SemSegEvaluator writes them to
            ``sem_seg_predictions.json``: ``[{"file_name", "category_id", "segmentation" (RLE)}]``.
            Every image with predictions is evaluated.

    Returns:
        dict: ``PQ``, ``SQ``, ``RQ``, ``mIoU`` in percent, ``n`` (classes in play), and
        ``per_class`` ({class name: {"PQ", "SQ", "RQ"}}).
    """
    metadata = MetadataCatalog.get(dataset_name)
    class_names = metadata.stuff_classes
    num_classes = len(class_names)
    ignore_label = metadata.ignore_label
    gt_files = {
        image_key(d["file_name"]): d["sem_seg_file_name"] for d in DatasetCatalog.get(dataset_name)
    }
    predictions = _load_predictions(json_file, metadata)
    unknown = sorted(set(predictions) - set(gt_files))
    if unknown:
        raise ValueError(
            f"{json_file} has predictions for {len(unknown)} images that are not in "
            f"'{dataset_name}', e.g. {unknown[:5]}."
        )

    categories = [{"id": i, "name": name, "isthing": 0} for i, name in enumerate(class_names)]
    conf_matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="semantic_pq_") as folder:
        gt_folder, pred_folder = os.path.join(folder, "gt"), os.path.join(folder, "pred")
        os.makedirs(gt_folder)
        os.makedirs(pred_folder)
        gt_annotations, pred_annotations = [], []
        for image_id, key in enumerate(sorted(predictions)):
            gt = _read_ground_truth(gt_files[key], num_classes, ignore_label)
            pred = _rasterise(predictions[key], gt.shape, ignore_label, key)
            gt_annotations.append(_panoptic_annotation(gt, ignore_label, image_id, gt_folder))
            pred_annotations.append(_panoptic_annotation(pred, ignore_label, image_id, pred_folder))

            gt_index = np.where(gt == ignore_label, num_classes, gt)
            pred_index = np.where(pred == ignore_label, num_classes, pred)
            conf_matrix += np.bincount(
                (num_classes + 1) * pred_index.reshape(-1) + gt_index.reshape(-1),
                minlength=conf_matrix.size,
            ).reshape(conf_matrix.shape)
            if (image_id + 1) % 100 == 0:
                logger.info(f"Prepared {image_id + 1}/{len(predictions)} images.")

        gt_json, pred_json = os.path.join(folder, "gt.json"), os.path.join(folder, "pred.json")
        for path, annotations in ((gt_json, gt_annotations), (pred_json, pred_annotations)):
            with open(path, "w") as f:
                json.dump({"annotations": annotations, "categories": categories}, f)
        pq = pq_from_files(gt_json, pred_json, gt_folder, pred_folder)

    scores = pq["All"]
    results = {m.upper(): 100 * scores.get(m, float("nan")) for m in ("pq", "sq", "rq")}
    results["n"] = scores["n"]
    results["mIoU"] = 100 * _miou(conf_matrix) if predictions else float("nan")
    results["per_class"] = {
        class_names[c]: {k.upper(): 100 * v for k, v in class_scores.items()}
        for c, class_scores in pq["per_class"].items()
    }
    return results
