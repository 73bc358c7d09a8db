"""
YouTube-VIS evaluation on top of pycocotools.

The YouTube-VIS rules differ from COCO's in two places, both substituted here while COCOeval's
matching (``evaluateImg``), accumulation and summary are used as they are, with a *video* in the
role of COCO's image:

* IoU between a predicted and a ground-truth track is spatio-temporal: the intersections and the
  unions of their masks are summed over all frames before dividing (a frame where a track has no
  mask adds the other track's area to the union only);
* the area that sorts a track into small / medium / large is its average mask area over the
  frames where it is visible, with the thresholds 128^2 and 256^2 (not COCO's 32^2 and 96^2).

Reported: AP, AP50, AP75, APs, APm, APl, AR1, AR10 (x100, as Detectron2's COCO figures) and AP
per category. Crowd annotations are not used by YouTube-VIS and are treated as ordinary tracks.

Predictions follow the CodaLab submission format: ``{"video_id", "category_id", "score",
"segmentations": [one compressed RLE per frame]}``; a None frame means an empty mask.
"""
import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

__all__ = [
    "YTVISEvaluator",
    "YTVISeval",
    "evaluate_ytvis",
    "instances_to_ytvis_json",
    "YTVIS_AREA_RANGES",
    "METRIC_NAMES",
]

logger = logging.getLogger(__name__)

YTVIS_AREA_RANGES = [[0, 1e10], [0, 128**2], [128**2, 256**2], [256**2, 1e10]]
# COCOeval.stats indices of the reported metrics.
METRIC_NAMES = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR1": 6, "AR10": 7}


def _to_rle(segmentation, height, width):
    """A frame's segmentation (compressed/uncompressed RLE, polygons or None) -> RLE or None."""
    if not segmentation:
        return None
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list):
            return mask_util.frPyObjects(segmentation, *segmentation["size"])
        return segmentation
    return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))


def _track(annotation, video, json_file):
    """A copy of an annotation / prediction with its RLEs, per-frame areas and average area."""
    segmentations = annotation.get("segmentations")
    if not isinstance(segmentations, list) or len(segmentations) != len(video["file_names"]):
        count = len(segmentations) if isinstance(segmentations, list) else "no"
        raise ValueError(
            f"{json_file}: a track of video {video['id']} has {count} segmentation entries; "
            f"the video has {len(video['file_names'])} frames"
        )
    track = {k: v for k, v in annotation.items() if k not in ("segmentations", "bboxes", "areas")}
    track["image_id"] = annotation["video_id"]
    track["_rles"] = [_to_rle(s, video["height"], video["width"]) for s in segmentations]
    areas = np.array([mask_util.area(r) if r is not None else 0 for r in track["_rles"]], dtype=np.float64)
    track["_areas"] = areas
    visible = areas[areas > 0]
    track["area"] = float(visible.mean()) if len(visible) else 0.0
    track.setdefault("iscrowd", 0)
    return track


def spatio_temporal_iou(dts, gts):
    """IoU matrix (len(dts) x len(gts)) of tracks made by :func:`_track`; one frame count for all."""
    iou = np.zeros((len(dts), len(gts)))
    if not dts or not gts:
        return iou
    intersection = np.zeros((len(dts), len(gts)))
    for frame in range(len(gts[0]["_rles"])):
        d_index = [i for i, d in enumerate(dts) if d["_rles"][frame] is not None and d["_areas"][frame] > 0]
        g_index = [j for j, g in enumerate(gts) if g["_rles"][frame] is not None and g["_areas"][frame] > 0]
        if not d_index or not g_index:
            continue
        frame_iou = mask_util.iou(
            [dts[i]["_rles"][frame] for i in d_index], [gts[j]["_rles"][frame] for j in g_index], [0] * len(g_index)
        )
        area_sum = np.array([dts[i]["_areas"][frame] for i in d_index])[:, None] + np.array(
            [gts[j]["_areas"][frame] for j in g_index]
        )[None, :]
        # IoU = I / (A + B - I)  <=>  I = IoU (A + B) / (1 + IoU); the pixel count is an integer.
        intersection[np.ix_(d_index, g_index)] += np.round(frame_iou * area_sum / (1.0 + frame_iou))
    area_d = np.array([d["_areas"].sum() for d in dts])
    area_g = np.array([g["_areas"].sum() for g in gts])
    union = area_d[:, None] + area_g[None, :] - intersection
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou


class YTVISeval(COCOeval):
    """COCOeval with videos as images, spatio-temporal IoU and YouTube-VIS area ranges."""

    def __init__(self, coco_gt, coco_dt):
        # iouType "bbox" keeps COCOeval._prepare from rasterising COCO image segmentations; the
        # IoU it would compute is replaced by computeIoU below.
        super().__init__(coco_gt, coco_dt, iouType="bbox")
        self.params.areaRng = copy.deepcopy(YTVIS_AREA_RANGES)
        self.params.maxDets = [1, 10, 100]

    def computeIoU(self, imgId, catId):
        gts = self._gts[imgId, catId]
        dts = self._dts[imgId, catId]
        if not gts and not dts:
            return []
        # The detections' order must be COCOeval's: by decreasing score, at most maxDets[-1].
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: self.params.maxDets[-1]]
        return spatio_temporal_iou(dts, gts)


def _coco_of(videos, categories, tracks):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": v["id"], "height": v["height"], "width": v["width"]} for v in videos],
        "categories": copy.deepcopy(categories),
        "annotations": tracks,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_ytvis(gt, predictions, video_ids=None, json_file="ground truth"):
    """
    Evaluate CodaLab-format `predictions` against a YouTube-VIS ground-truth dict.

    Args:
        gt (dict): the parsed ground-truth json (``videos``, ``categories``, ``annotations``).
        predictions (list[dict]): ``video_id``, ``category_id`` (dataset id), ``score``, ``segmentations``.
        video_ids: evaluate only these videos (default: all of the ground truth).

    Returns:
        (metrics, per_category, summary): metrics name -> value x100 (NaN where undefined),
        category name -> AP x100, and COCOeval's printed summary.
    """
    videos = {v["id"]: v for v in gt["videos"]}
    if video_ids is not None:
        videos = {i: videos[i] for i in video_ids if i in videos}
    gt_tracks, dt_tracks = [], []
    for annotation in gt.get("annotations", []):
        if annotation["video_id"] in videos:
            track = _track(annotation, videos[annotation["video_id"]], json_file)
            track["id"] = len(gt_tracks) + 1
            gt_tracks.append(track)
    unknown = sorted({p["video_id"] for p in predictions} - {v["id"] for v in gt["videos"]})
    if unknown:
        raise ValueError(f"Predictions for video id(s) {unknown[:10]} that are not in {json_file}.")
    for prediction in predictions:
        if prediction["video_id"] in videos:
            track = _track(prediction, videos[prediction["video_id"]], "predictions")
            track["id"] = len(dt_tracks) + 1
            dt_tracks.append(track)
    video_list = list(videos.values())
    coco_gt = _coco_of(video_list, gt["categories"], gt_tracks)
    coco_dt = _coco_of(video_list, gt["categories"], dt_tracks)
    evaluator = YTVISeval(coco_gt, coco_dt)
    evaluator.params.imgIds = sorted(videos)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(evaluator.stats[i] * 100 if evaluator.stats[i] >= 0 else "nan") for name, i in METRIC_NAMES.items()}
    precision = evaluator.eval["precision"]  # IoU x recall x category x area x maxDets
    per_category = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = coco_gt.cats[category_id]["name"]
        per_category[name] = float(values.mean() * 100) if values.size else float("nan")
    return metrics, per_category, summary.getvalue()


def instances_to_ytvis_json(video_id, output, contiguous_to_dataset_id):
    """
    The model's output for one video -> CodaLab predictions: one compressed RLE per frame (also
    for frames where the mask is empty, as upstream writes them).

    Args:
        output (dict): ``pred_scores`` (list[float]), ``pred_labels`` (list[int], contiguous ids),
            ``pred_masks`` (list of (T, H, W) bool tensors or arrays).
    """
    predictions = []
    for score, label, masks in zip(output["pred_scores"], output["pred_labels"], output["pred_masks"]):
        masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        segmentations = []
        for mask in masks:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("utf-8")
            segmentations.append(rle)
        predictions.append(
            {
                "video_id": video_id,
                "score": float(score),
                "category_id": contiguous_to_dataset_id[int(label)],
                "segmentations": segmentations,
            }
        )
    return predictions


class YTVISEvaluator(DatasetEvaluator):
    """
    Collects the video model's predictions, writes ``results.json`` (CodaLab format) into
    `output_dir` and, when the dataset's json has annotations, reports the YouTube-VIS metrics
    (``{"segm": {...}}``) on the videos it processed.
    """

    def __init__(self, dataset_name, cfg=None, distributed=True, output_dir=None):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            raise ValueError(f"Dataset {dataset_name!r} has no 'json_file' in its metadata: YTVISEvaluator needs it.")
        id_map = self._metadata.thing_dataset_id_to_contiguous_id
        self._contiguous_to_dataset_id = {v: k for k, v in id_map.items()}
        self._predictions = []
        self._video_ids = []

    def reset(self):
        self._predictions = []
        self._video_ids = []

    def process(self, inputs, outputs):
        # The video model returns one dict for its batch of one video (as upstream); a list of
        # dicts (one per input) is taken too.
        if isinstance(outputs, dict):
            outputs = [outputs]
        if len(inputs) != len(outputs):
            raise ValueError(f"YTVISEvaluator: {len(inputs)} videos in the batch but {len(outputs)} outputs.")
        for video, output in zip(inputs, outputs):
            self._video_ids.append(video["video_id"])
            self._predictions += instances_to_ytvis_json(video["video_id"], output, self._contiguous_to_dataset_id)

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            video_ids = list(itertools.chain(*comm.gather(self._video_ids, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions, video_ids = self._predictions, self._video_ids
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "results.json")
            with open(path, "w") as f:
                json.dump(predictions, f)
            logger.info("Saved %d predictions of %d videos to %s", len(predictions), len(video_ids), path)
        with open(self._metadata.json_file) as f:
            gt = json.load(f)
        if not gt.get("annotations"):
            logger.info("%s has no annotations: results.json is for the evaluation server.", self._metadata.json_file)
            return {}
        metrics, per_category, summary = evaluate_ytvis(gt, predictions, video_ids, self._metadata.json_file)
        logger.info("YouTube-VIS evaluation of %d videos:\n%s", len(video_ids), summary)
        results = dict(metrics)
        results.update({f"AP-{name}": value for name, value in per_category.items()})
        return OrderedDict(segm=results)
