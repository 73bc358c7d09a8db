"""Boundary AP: COCO mask AP with Boundary IoU (Cheng et al., "Boundary IoU: Improving
Object-Centric Image Segmentation Evaluation", CVPR 2021).

The reference implementation (boundary-iou-api) is not on PyPI, so the measure is implemented here
from the paper's definition and plugged into pycocotools' COCOeval, whose matching, accumulation
and summary are used unchanged:

* the boundary of a mask G is ``G_d ∩ G``: the mask pixels within distance d of its contour, i.e.
  the mask minus its erosion by a 3x3 square applied d times, outside the image counting as
  background (so a mask cut by the image border has a boundary along it);
* d = round(dilation_ratio x image diagonal), at least 1 pixel; the paper's ratio is 0.02;
* Boundary IoU = |(G_d ∩ G) ∩ (P_d ∩ P)| / |(G_d ∩ G) ∪ (P_d ∩ P)|;
* Boundary AP replaces the mask IoU of each detection / non-crowd ground truth pair with
  min(mask IoU, Boundary IoU); crowd regions keep COCO's mask criterion.
"""
import contextlib
import io
import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["mask_to_boundary", "boundary_iou", "BoundaryCOCOeval", "evaluate_coco_boundary_ap"]

DEFAULT_DILATION_RATIO = 0.02
AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def boundary_width(height, width, dilation_ratio=DEFAULT_DILATION_RATIO):
    """The boundary width d in pixels for an image of this size."""
    return max(1, int(round(dilation_ratio * np.sqrt(height**2 + width**2))))


def mask_to_boundary(mask, dilation_ratio=DEFAULT_DILATION_RATIO):
    """The inner boundary band ``G_d ∩ G`` of a binary (H, W) mask, as a uint8 0/1 mask."""
    mask = np.asarray(mask).astype(np.uint8)
    height, width = mask.shape
    width_px = boundary_width(height, width, dilation_ratio)
    # Pad with background: cv2.erode's own border would count the outside as foreground.
    padded = np.pad(mask, 1, mode="constant", constant_values=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=width_px)[1:-1, 1:-1]
    return mask - eroded


def boundary_iou(gt_mask, pred_mask, dilation_ratio=DEFAULT_DILATION_RATIO):
    """Boundary IoU of two binary masks of the same image."""
    gt_boundary = mask_to_boundary(gt_mask, dilation_ratio).astype(bool)
    pred_boundary = mask_to_boundary(pred_mask, dilation_ratio).astype(bool)
    union = np.logical_or(gt_boundary, pred_boundary).sum()
    return float(np.logical_and(gt_boundary, pred_boundary).sum() / union) if union else 0.0


class BoundaryCOCOeval(COCOeval):
    """pycocotools' COCOeval for masks, matching with min(mask IoU, Boundary IoU).

    Everything but :meth:`computeIoU` is pycocotools' (``params.iouType`` stays ``"segm"`` so that
    annotations are rasterised and summarised as masks).
    """

    def __init__(self, coco_gt, coco_dt, dilation_ratio=DEFAULT_DILATION_RATIO):
        super().__init__(coco_gt, coco_dt, iouType="segm")
        self.dilation_ratio = dilation_ratio
        self._boundary_rles = {}

    def _boundary_rle(self, source, annotation):
        key = (source, annotation["id"])
        if key not in self._boundary_rles:
            # By now COCOeval._prepare has turned every segmentation into an RLE.
            mask = mask_util.decode(annotation["segmentation"])
            boundary = mask_to_boundary(mask, self.dilation_ratio)
            self._boundary_rles[key] = mask_util.encode(np.asfortranarray(boundary))
        return self._boundary_rles[key]

    def computeIoU(self, imgId, catId):
        mask_ious = super().computeIoU(imgId, catId)
        if len(mask_ious) == 0:
            return mask_ious
        params = self.params
        if params.useCats:
            gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gts = [g for c in params.catIds for g in self._gts[imgId, c]]
            dts = [d for c in params.catIds for d in self._dts[imgId, c]]
        # The same detection order and cut as the parent's mask IoU rows.
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: params.maxDets[-1]]

        iscrowd = np.array([int(g["iscrowd"]) for g in gts], dtype=bool)
        boundary_ious = mask_util.iou(
            [self._boundary_rle("dt", d) for d in dts],
            [self._boundary_rle("gt", g) for g in gts],
            [int(c) for c in iscrowd],
        )
        ious = np.array(mask_ious, dtype=np.float64)
        ious[:, ~iscrowd] = np.minimum(ious[:, ~iscrowd], np.asarray(boundary_ious)[:, ~iscrowd])
        return ious


def evaluate_coco_boundary_ap(
    gt_json_file,
    dt_json_file,
    iou_type="boundary",
    dilation_ratio=DEFAULT_DILATION_RATIO,
    verbose=True,
):
    """Boundary AP (or plain mask AP with ``iou_type="segm"``) of COCO-format instance results.

    ``dt_json_file`` is a COCO results file, e.g. Detectron2's ``coco_instances_results.json``;
    boxes in it are dropped so that object areas (small/medium/large) come from the masks.

    Returns:
        dict: AP, AP50, AP75, APs, APm, APl in percent (NaN where no ground truth is in range).
    """
    if iou_type not in ("boundary", "segm"):
        raise ValueError(f"iou_type must be 'boundary' or 'segm', got {iou_type!r}")
    with open(dt_json_file) as f:
        detections = json.load(f)
    if not isinstance(detections, list):
        raise ValueError(f"{dt_json_file} is not a COCO results file (a JSON list of detections).")
    missing_masks = [i for i, d in enumerate(detections) if "segmentation" not in d]
    if missing_masks:
        raise ValueError(
            f"{len(missing_masks)} detections in {dt_json_file} have no 'segmentation' "
            f"(e.g. entries {missing_masks[:10]}): boundary AP needs masks."
        )
    for detection in detections:
        detection.pop("bbox", None)

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO(gt_json_file)
        if not detections:
            return {metric: 0.0 for metric in AP_METRICS}
        coco_dt = coco_gt.loadRes(detections)
        if iou_type == "boundary":
            coco_eval = BoundaryCOCOeval(coco_gt, coco_dt, dilation_ratio)
        else:
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {
        metric: float(100 * value) if value >= 0 else float("nan")
        for metric, value in zip(AP_METRICS, coco_eval.stats)
    }
