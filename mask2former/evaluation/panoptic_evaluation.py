"""Panoptic quality (PQ, SQ, RQ) through panopticapi."""
import contextlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import tempfile
from collections import OrderedDict

from tabulate import tabulate

from detectron2.evaluation import COCOPanopticEvaluator as _D2COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["COCOPanopticEvaluator", "pq_from_files"]

logger = logging.getLogger(__name__)

_GROUPS = (("All", None, ""), ("Things", True, "_th"), ("Stuff", False, "_st"))


def pq_from_files(gt_json_file, pred_json_file, gt_folder, pred_folder, num_workers=None):
    """PQ/SQ/RQ of COCO-panoptic-format predictions, with panopticapi's matching and statistics.

    Like ``panopticapi.evaluation.pq_compute`` (whose per-image ``pq_compute_single_core`` does
    all the matching), except that:

    * a group without any category in play (a dataset without stuff, say) is reported with
      ``n == 0`` and no scores instead of failing with ZeroDivisionError;
    * the worker pool is sized to the work (at most ``num_workers``, default one per CPU; a single
      chunk runs in this process) and closed afterwards, where panopticapi leaves it open.

    Returns:
        dict: ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"} (scores absent when n == 0),
        "per_class": {category_id: {"pq", "sq", "rq"}}}``, scores in [0, 1].
    """
    from panopticapi.evaluation import PQStat

    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    categories = {category["id"]: category for category in gt_json["categories"]}
    pred_by_image = {ann["image_id"]: ann for ann in pred_json["annotations"]}
    missing = [
        ann["image_id"] for ann in gt_json["annotations"] if ann["image_id"] not in pred_by_image
    ]
    if missing:
        raise ValueError(
            f"{len(missing)} images of {gt_json_file} have no panoptic prediction in "
            f"{pred_json_file}, e.g. image ids {missing[:10]}."
        )
    matched = [(ann, pred_by_image[ann["image_id"]]) for ann in gt_json["annotations"]]

    pq_stat = PQStat()
    with contextlib.redirect_stdout(io.StringIO()):  # panopticapi prints per-core progress
        chunk_stats = _pq_stats_per_chunk(matched, gt_folder, pred_folder, categories, num_workers)
    for chunk_stat in chunk_stats:
        pq_stat += chunk_stat

    results = {}
    for name, isthing, _ in _GROUPS:
        group = {
            label: info
            for label, info in categories.items()
            if isthing is None or bool(info["isthing"]) == isthing
        }
        in_play = [label for label in group if _count(pq_stat[label]) > 0]
        if in_play:
            in_play_categories = {label: group[label] for label in in_play}
            scores, per_class = pq_stat.pq_average(in_play_categories, isthing=None)
        else:
            scores, per_class = {"n": 0}, {}
        results[name] = scores
        if isthing is None:
            results["per_class"] = per_class
    return results


def _pq_stats_per_chunk(matched, gt_folder, pred_folder, categories, num_workers):
    from panopticapi.evaluation import pq_compute_single_core

    num_workers = min(num_workers or multiprocessing.cpu_count(), len(matched))
    if num_workers == 0:
        return []
    chunks = [matched[i::num_workers] for i in range(num_workers)]
    jobs = [(i, chunk, gt_folder, pred_folder, categories) for i, chunk in enumerate(chunks)]
    if num_workers == 1:
        return [pq_compute_single_core(*jobs[0])]
    with multiprocessing.Pool(processes=num_workers) as pool:
        return pool.starmap(pq_compute_single_core, jobs)


def _count(stat):
    return stat.tp + stat.fp + stat.fn


class COCOPanopticEvaluator(_D2COCOPanopticEvaluator):
    """Detectron2's :class:`~detectron2.evaluation.COCOPanopticEvaluator` (same inputs, same
    ``panoptic_seg/{PQ,SQ,RQ}{,_th,_st}`` results, same ``predictions.json``), evaluated with
    :func:`pq_from_files` so that a dataset without things or without stuff reports the groups it
    has instead of failing in panopticapi's averaging."""

    def evaluate(self):
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None

        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
            annotations = []
            for prediction in predictions:
                prediction = dict(prediction)
                with open(os.path.join(pred_dir, prediction["file_name"]), "wb") as f:
                    f.write(prediction.pop("png_string"))
                annotations.append(prediction)
            with open(gt_json) as f:
                json_data = json.load(f)
            json_data["annotations"] = annotations

            predictions_json = os.path.join(self._output_dir or pred_dir, "predictions.json")
            with PathManager.open(predictions_json, "w") as f:
                f.write(json.dumps(json_data))
            pq_res = pq_from_files(
                gt_json, PathManager.get_local_path(predictions_json), gt_folder, pred_dir
            )

        res = {}
        for name, _, suffix in _GROUPS:
            if pq_res[name]["n"] == 0:
                logger.warning(
                    f"No {name.lower()} categories in {self._metadata.name}: no PQ{suffix}."
                )
                continue
            for metric in ("pq", "sq", "rq"):
                res[metric.upper() + suffix] = 100 * pq_res[name][metric]
        logger.info("Panoptic Evaluation Results:\n" + _results_table(pq_res))
        return OrderedDict({"panoptic_seg": res})


def _results_table(pq_res):
    rows = []
    for name, _, _ in _GROUPS:
        group = pq_res[name]
        scores = [100 * group[k] if group["n"] else float("nan") for k in ("pq", "sq", "rq")]
        rows.append([name] + scores + [group["n"]])
    return tabulate(
        rows,
        headers=["", "PQ", "SQ", "RQ", "#categories"],
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
    )
