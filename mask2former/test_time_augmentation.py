"""Test-time augmentation (``TEST.AUG.ENABLED``): multi-scale (``TEST.AUG.MIN_SIZES``, ``MAX_SIZE``)
and horizontal flip (``TEST.AUG.FLIP``) for semantic, panoptic and instance segmentation.

How predictions of the augmented copies are merged
---------------------------------------------------
Every augmented copy is run through the model up to its mask logits, which are brought back to the
original frame (cropped, resized to the requested output size, flipped back).

* **Semantic** (as the reference implementation): the per-class score maps ``sem_seg`` of all
  copies are averaged.
* **Panoptic and instance** (the reference implementation has no TTA for them): they need one set
  of (class distribution, mask) *per query*, so the copies are merged query by query:

  1. a reference copy is chosen: the un-flipped one whose short side is closest to
     ``INPUT.MIN_SIZE_TEST`` (the scale the model is evaluated at);
  2. the queries of every other copy are matched one-to-one to the reference queries with the
     Hungarian algorithm on the cost ``(1 - soft Dice of the mask probabilities) + (1 - class
     probability overlap sum_k p_k q_k)``. A query usually predicts the same segment in every copy,
     so this is mostly the identity, but nothing in the model guarantees it (queries may be
     position-sensitive and a flip moves things), and averaging unrelated segments would be wrong;
  3. the class probabilities (softmax, incl. "no object") and mask probabilities (sigmoid) of
     matched queries are averaged over the copies;
  4. the averages are turned back into logits (``log p`` for classes, ``logit(p)`` for masks) and go
     through the model's standard ``panoptic_inference`` / ``instance_inference``, so thresholds,
     thing/stuff rules and top-k behave exactly as without TTA (a pixel is in an instance mask when
     the averaged probability exceeds 0.5).

With a single augmentation (one min size, no flip) the outputs equal the model's own.

Sizes of the copies
-------------------
Detectron2's default ``TEST.AUG.MIN_SIZES`` (400 ... 1200) and ``MAX_SIZE`` (4000) suit models
tested at ``INPUT.MIN_SIZE_TEST`` 800. A config that keeps them but tests at another size (the
synthetic CPU configs test at 128) gets the same sizes relative to its test size, i.e. 0.5x to 1.5x
``MIN_SIZE_TEST`` in steps of 0.125x (:func:`tta_sizes`); on 96x128 images the defaults made TTA
hundreds of times slower than plain inference, at scales the model never saw. Configs that set
sizes of their own keep them.
"""
import copy
import logging
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .modeling.postprocessing import resize_to_output

__all__ = ["SemanticSegmentorWithTTA", "align_queries", "tta_sizes"]

logger = logging.getLogger(__name__)

# Side of the (downsampled) masks used to align queries: enough to tell segments apart, cheap.
_ALIGN_SIZE = 64


def align_queries(
    ref_class_prob: torch.Tensor, ref_mask_prob: torch.Tensor, class_prob: torch.Tensor, mask_prob: torch.Tensor
) -> torch.Tensor:
    """Permutation ``perm`` such that query ``perm[i]`` of the second prediction matches reference
    query ``i`` (Hungarian matching, cost in the module docstring).

    Args:
        ref_class_prob, class_prob: (Q, K+1) class probabilities.
        ref_mask_prob, mask_prob: (Q, H, W) mask probabilities in the same frame.
    """
    if ref_mask_prob.shape != mask_prob.shape or ref_class_prob.shape != class_prob.shape:
        raise ValueError(
            f"align_queries: shapes differ: masks {tuple(ref_mask_prob.shape)} vs {tuple(mask_prob.shape)}, "
            f"classes {tuple(ref_class_prob.shape)} vs {tuple(class_prob.shape)}"
        )
    h, w = mask_prob.shape[-2:]
    if max(h, w) > _ALIGN_SIZE:
        scale = _ALIGN_SIZE / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        ref_mask_prob = F.adaptive_avg_pool2d(ref_mask_prob[None], size)[0]
        mask_prob = F.adaptive_avg_pool2d(mask_prob[None], size)[0]
    a = ref_mask_prob.flatten(1).double()
    b = mask_prob.flatten(1).double()
    dice = (2 * a @ b.T + 1) / (a.sum(1)[:, None] + b.sum(1)[None, :] + 1)
    class_overlap = ref_class_prob.double() @ class_prob.double().T
    cost = (1 - dice) + (1 - class_overlap)
    ref_idx, idx = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(len(ref_idx), dtype=torch.int64)
    perm[torch.as_tensor(ref_idx)] = torch.as_tensor(idx, dtype=torch.int64)
    return perm


# Detectron2's TEST.AUG defaults, and the test size they were chosen for (its INPUT.MIN_SIZE_TEST).
_DETECTRON2_AUG_MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_DETECTRON2_AUG_MAX_SIZE = 4000
_DETECTRON2_MIN_SIZE_TEST = 800


def tta_sizes(cfg) -> Tuple[Tuple[int, ...], int]:
    """``(min_sizes, max_size)`` of the TTA copies: ``TEST.AUG.MIN_SIZES`` / ``MAX_SIZE``, unless
    they are Detectron2's defaults and the model is tested at another size than 800; the defaults
    are then scaled by ``INPUT.MIN_SIZE_TEST / 800`` (see the module docstring)."""
    min_sizes, max_size = tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE
    test_size = cfg.INPUT.MIN_SIZE_TEST
    keeps_defaults = min_sizes == _DETECTRON2_AUG_MIN_SIZES and max_size == _DETECTRON2_AUG_MAX_SIZE
    if not keeps_defaults or test_size in (0, _DETECTRON2_MIN_SIZE_TEST):
        return min_sizes, max_size
    scale = test_size / _DETECTRON2_MIN_SIZE_TEST
    scaled = tuple(sorted({max(1, round(size * scale)) for size in min_sizes}))
    return scaled, max(1, round(max_size * scale))


class SemanticSegmentorWithTTA(nn.Module):
    """A MaskFormer with test-time augmentation (see the module docstring for the merge).

    Produces the outputs the wrapped model has enabled: ``sem_seg``, ``panoptic_seg`` and
    ``instances``. The name is the reference implementation's, where only ``sem_seg`` is produced.
    """

    def __init__(self, cfg, model, tta_mapper=None, batch_size: int = 1):
        """
        Args:
            cfg: the config (TEST.AUG.*, INPUT.FORMAT, INPUT.MIN_SIZE_TEST).
            model: a MaskFormer (possibly wrapped in DistributedDataParallel).
            tta_mapper: callable returning the augmented copies of a dataset dict, each with a
                "transforms" entry; default ``DatasetMapperTTA(cfg)``.
            batch_size: augmented copies per model call.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.cfg = cfg.clone()
        self.model = model
        if tta_mapper is None:
            min_sizes, max_size = tta_sizes(cfg)
            if (min_sizes, max_size) != (tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE):
                logger.info(
                    "TTA: Detectron2's default TEST.AUG sizes are meant for INPUT.MIN_SIZE_TEST %d; at "
                    "MIN_SIZE_TEST %d using MIN_SIZES %s, MAX_SIZE %d instead (set TEST.AUG.MIN_SIZES "
                    "and MAX_SIZE to choose).",
                    _DETECTRON2_MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST, min_sizes, max_size,
                )
            tta_cfg = cfg.clone()
            tta_cfg.defrost()
            tta_cfg.TEST.AUG.MIN_SIZES, tta_cfg.TEST.AUG.MAX_SIZE = min_sizes, max_size
            tta_mapper = DatasetMapperTTA(tta_cfg)
        self.tta_mapper = tta_mapper
        if batch_size < 1:
            raise ValueError(f"SemanticSegmentorWithTTA: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.input_format = cfg.INPUT.FORMAT
        self.reference_min_size = cfg.INPUT.MIN_SIZE_TEST

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict]:
        return [self._inference_one_image(self._maybe_read_image(x)) for x in batched_inputs]

    def _maybe_read_image(self, dataset_dict: Dict) -> Dict:
        ret = copy.copy(dataset_dict)
        if "image" not in ret:
            image = read_image(ret.pop("file_name"), self.input_format)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if "height" not in ret or "width" not in ret:
            ret["height"], ret["width"] = ret["image"].shape[-2:]
        return ret

    def _predict(self, augmented_inputs: List[Dict]) -> List[Tuple]:
        """Per copy: class logits (Q, K+1), mask logits (Q, height, width) in the copy's frame,
        and its ``sem_seg`` exactly as the model would output it (None if semantic is off)."""
        model = self.model
        results = []
        for start in range(0, len(augmented_inputs), self.batch_size):
            chunk = augmented_inputs[start : start + self.batch_size]
            with torch.no_grad():
                images, mask_cls_results, mask_pred_results = model.predict_masks(chunk)
            for mask_cls, mask_pred, x, image_size in zip(
                mask_cls_results, mask_pred_results, chunk, images.image_sizes
            ):
                height, width = x["height"], x["width"]
                sem_seg = None
                if model.semantic_on and not model.sem_seg_postprocess_before_inference:
                    sem_seg = model.semantic_inference(mask_cls, mask_pred)
                    sem_seg = resize_to_output(sem_seg, image_size, height, width)
                mask_pred = resize_to_output(mask_pred, image_size, height, width)
                mask_cls = mask_cls.to(mask_pred)
                if model.semantic_on and sem_seg is None:
                    sem_seg = model.semantic_inference(mask_cls, mask_pred)
                results.append((mask_cls, mask_pred, sem_seg))
        return results

    def _reference_index(self, augmented_inputs: List[Dict], flips: List[bool]) -> int:
        candidates = [i for i, flipped in enumerate(flips) if not flipped] or list(range(len(flips)))

        def distance_to_test_size(i):
            return abs(min(augmented_inputs[i]["image"].shape[-2:]) - self.reference_min_size)

        return min(candidates, key=distance_to_test_size)

    def _inference_one_image(self, input: Dict) -> Dict:
        augmented_inputs = self.tta_mapper(input)
        tfms = [x.pop("transforms") for x in augmented_inputs]
        flips = [any(isinstance(t, HFlipTransform) for t in tfm.transforms) for tfm in tfms]
        predictions = self._predict(augmented_inputs)

        unflipped = []
        for (mask_cls, mask_pred, sem_seg), flipped in zip(predictions, flips):
            if flipped:
                mask_pred = mask_pred.flip(dims=[-1])
                sem_seg = sem_seg.flip(dims=[-1]) if sem_seg is not None else None
            unflipped.append((mask_cls, mask_pred, sem_seg))

        result = {}
        if self.model.semantic_on:
            result["sem_seg"] = sum(s for _, _, s in unflipped) / len(unflipped)
        if self.model.panoptic_on or self.model.instance_on:
            mask_cls, mask_pred = self._merge_queries(unflipped, self._reference_index(augmented_inputs, flips))
            mask_prob = mask_pred.sigmoid()
            if self.model.panoptic_on:
                result["panoptic_seg"] = self.model.panoptic_inference(mask_cls, mask_pred, mask_prob)
            if self.model.instance_on:
                result["instances"] = self.model.instance_inference(mask_cls, mask_pred, mask_prob)
        return result

    @staticmethod
    def _merge_queries(predictions, reference: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Query-aligned average of the copies' probabilities, returned as logits."""
        ref_cls, ref_mask, _ = predictions[reference]
        if len(predictions) == 1:
            return ref_cls, ref_mask
        ref_class_prob, ref_mask_prob = ref_cls.softmax(-1), ref_mask.sigmoid()
        class_sum, mask_sum = ref_class_prob.clone(), ref_mask_prob.clone()
        for i, (mask_cls, mask_pred, _) in enumerate(predictions):
            if i == reference:
                continue
            class_prob, mask_prob = mask_cls.softmax(-1), mask_pred.sigmoid()
            perm = align_queries(ref_class_prob, ref_mask_prob, class_prob, mask_prob).to(class_prob.device)
            class_sum += class_prob[perm]
            mask_sum += mask_prob[perm]
        n = len(predictions)
        class_prob, mask_prob = class_sum / n, mask_sum / n
        tiny = torch.finfo(class_prob.dtype).tiny
        return class_prob.clamp_min(tiny).log(), torch.logit(mask_prob, eps=1e-7)
