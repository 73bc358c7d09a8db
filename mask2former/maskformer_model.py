"""The MaskFormer / Mask2Former meta-architecture: normalise, pad, backbone + head, then either the
training losses or the semantic / panoptic / instance post-processing.

Post-processing matches the reference implementation output for output (same operations, same
order, same tie-breaking), with two documented differences:

* ``instances.pred_boxes`` are the tight boxes of the predicted masks (detectron2's
  ``BitMasks.get_bounding_boxes`` convention: ``x2 = last column + 1``; empty mask -> zeros); the
  reference implementation writes all-zero boxes.
* ``TEST.DETECTIONS_PER_IMAGE`` larger than queries x classes keeps every (query, class) pair
  instead of failing inside ``topk``.

Faster than the reference implementation with bit-identical results (checked against the
reference formulas in tests/test_inference.py): the mask sigmoid is shared by the three inference
types; the identity resize to an unchanged output size is skipped; panoptic inference finds each
pixel's query with a running maximum over the kept queries (argmax along the query dimension is
slow on CPU) and counts segment areas in one pass instead of one pass per query; instance
inference computes mask statistics once per distinct query instead of gathering two full-size
masks per (query, class) pair.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from torch import nn

from .modeling.criterion import SetCriterion
from .modeling.matcher import HungarianMatcher


def resize_to_output(x: torch.Tensor, image_size: Tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Crops the padding off ``x`` (C, H_pad, W_pad) and resizes it bilinearly to (height, width).

    Same values as detectron2's ``sem_seg_postprocess``; when the cropped size already is the
    output size the (exact identity) interpolation is skipped.
    """
    x = x[:, : image_size[0], : image_size[1]]
    if (x.shape[-2], x.shape[-1]) == (height, width):
        return x
    return F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (K, 4) of binary masks (K, H, W); x2/y2 are exclusive; empty mask -> zeros."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    masks = masks.bool()
    height, width = masks.shape[-2:]
    cols = masks.any(dim=1).to(torch.uint8)  # (K, W)
    rows = masks.any(dim=2).to(torch.uint8)  # (K, H)
    # argmax returns the first maximal index: the first occupied column/row.
    x1 = cols.argmax(dim=1)
    y1 = rows.argmax(dim=1)
    x2 = width - cols.flip(1).argmax(dim=1)
    y2 = height - rows.flip(1).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)
    boxes[~cols.bool().any(dim=1)] = 0
    return boxes


def metadata_dataset_name(cfg) -> str:
    """
    The dataset whose metadata (class names, thing/stuff ids) the model is built with: the first
    training set, or the first test set when a config only evaluates or predicts (--eval-only,
    DefaultPredictor) and leaves DATASETS.TRAIN empty.
    """
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError(
            "MaskFormer reads its class names and thing/stuff ids from a dataset's metadata, but "
            "DATASETS.TRAIN and DATASETS.TEST are both empty: name the dataset the model was trained "
            "on (or one with the same classes) in DATASETS.TEST."
        )
    return names[0]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Main class for mask classification semantic / panoptic / instance segmentation."""

    # Subclasses with other targets (e.g. video clips) swap in their matcher and losses.
    matcher_class = HungarianMatcher
    criterion_class = SetCriterion

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Tuple[float],
        pixel_std: Tuple[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
    ):
        """
        Args:
            backbone: a :class:`Backbone` module.
            sem_seg_head: head returning ``pred_logits`` (N, Q, K+1), ``pred_masks`` (N, Q, h, w)
                and optionally ``aux_outputs``; must expose ``num_classes``.
            criterion: computes the (unweighted) losses; its ``weight_dict`` weights them.
            num_queries: number of queries Q.
            object_mask_threshold: panoptic: minimum class probability of a kept query.
            overlap_threshold: panoptic: minimum visible / full mask area of a kept segment.
            metadata: dataset metadata (thing ids for panoptic / instance inference).
            size_divisibility: pad images to a multiple of this (< 0: the backbone's).
            sem_seg_postprocess_before_inference: resize mask logits to the output size before
                inference (needed by panoptic / instance inference) instead of resizing the
                semantic result.
            pixel_mean, pixel_std: per-channel normalisation, in the model's input channel order.
            semantic_on, panoptic_on, instance_on: which outputs inference produces.
            test_topk_per_image: instance inference keeps the top-k (query, class) pairs.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.overlap_threshold = overlap_threshold
        self.object_mask_threshold = object_mask_threshold
        self.metadata = metadata
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        # Non-persistent: published checkpoints do not contain them.
        self.register_buffer("pixel_mean", torch.Tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.Tensor(pixel_std).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"MaskFormer: PIXEL_MEAN {pixel_mean} and PIXEL_STD {pixel_std} differ in length")

        self.semantic_on = semantic_on
        self.instance_on = instance_on
        self.panoptic_on = panoptic_on
        self.test_topk_per_image = test_topk_per_image
        if not self.semantic_on and not self.sem_seg_postprocess_before_inference:
            raise ValueError(
                "MaskFormer: SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE must be on when SEMANTIC_ON is off"
            )

    @classmethod
    def from_config(cls, cfg):
        # The model needs its dataset's metadata. Register the config's custom datasets for entry
        # points that do not (Detectron2's DefaultPredictor, scripts); reading their annotations
        # is enough here, the files are checked by whatever trains or evaluates on them.
        from .data.custom import register_custom_datasets

        register_custom_datasets(cfg, validate=False)
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())

        mf = cfg.MODEL.MASK_FORMER
        matcher = cls.matcher_class(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        if mf.DEEP_SUPERVISION:
            # DEC_LAYERS counts the prediction from the learnable queries, hence DEC_LAYERS - 1 aux outputs.
            base = dict(weight_dict)
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        criterion = cls.criterion_class(
            sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": mf.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mf.TEST.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(metadata_dataset_name(cfg)),
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or mf.TEST.PANOPTIC_ON or mf.TEST.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": mf.TEST.SEMANTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "panoptic_on": mf.TEST.PANOPTIC_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------------------
    # input
    def _check_image(self, image, index: int) -> torch.Tensor:
        """Validates ``batched_inputs[index]["image"]`` and returns it as a (C, H, W) tensor.

        Accepted: uint8 or floating point values in the 0-255 range, CHW, with as many channels as
        PIXEL_MEAN; a single-channel (grey) image is replicated to every channel.
        """
        where = f'batched_inputs[{index}]["image"]'
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"MaskFormer: {where} must be a torch.Tensor (C, H, W), got {type(image).__name__}")
        if image.dtype == torch.bool or image.is_complex():
            raise TypeError(f"MaskFormer: {where} has dtype {image.dtype}; expected uint8 or float in 0-255")
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise ValueError(f"MaskFormer: {where} must have shape (C, H, W), got {tuple(image.shape)}")
        num_channels = self.pixel_mean.shape[0]
        if image.shape[0] == 1 and num_channels != 1:
            image = image.expand(num_channels, -1, -1)
        if image.shape[0] != num_channels:
            hint = " (it looks like H, W, C: permute it to C, H, W)" if image.shape[-1] == num_channels else ""
            raise ValueError(
                f"MaskFormer: {where} has shape {tuple(image.shape)}: expected {num_channels} channels "
                f"(C, H, W) in INPUT.FORMAT order{hint}. Convert 4-channel (RGBA) images to "
                f"{num_channels} channels before calling the model."
            )
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"MaskFormer: {where} is empty, shape {tuple(image.shape)}")
        if not image.is_floating_point() and image.dtype != torch.uint8:
            low, high = int(image.min()), int(image.max())
            if low < 0 or high > 255:
                raise ValueError(
                    f"MaskFormer: {where} has dtype {image.dtype} with values in [{low}, {high}]; "
                    "expected 8-bit values (0-255)"
                )
        return image

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalises every image and pads the batch (with zeros, after normalisation)."""
        images = []
        for i, x in enumerate(batched_inputs):
            image = self._check_image(x["image"], i).to(self.device)
            images.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, targets: List[Instances], images: ImageList) -> List[Dict]:
        h_pad, w_pad = images.tensor.shape[-2:]
        new_targets = []
        for targets_per_image in targets:
            gt_masks = targets_per_image.gt_masks
            if isinstance(gt_masks, BitMasks):
                gt_masks = gt_masks.tensor
            padded_masks = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded_masks[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            new_targets.append({"labels": targets_per_image.gt_classes, "masks": padded_masks})
        return new_targets

    # ------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: list of dicts (DatasetMapper format): ``image`` (C, H, W) in
                INPUT.FORMAT channel order, for training ``instances`` with ``gt_classes`` and
                ``gt_masks``, for inference optionally the output ``height`` and ``width``.
        Returns:
            training: dict of weighted losses. Inference: list of dicts with ``sem_seg``
            (K, height, width) scores, ``panoptic_seg`` (id map int32, segments_info) and
            ``instances``, depending on the enabled inference types.
        """
        if not self.training:
            images, mask_cls_results, mask_pred_results = self.predict_masks(batched_inputs)
            processed_results = []
            for mask_cls, mask_pred, input_per_image, image_size in zip(
                mask_cls_results, mask_pred_results, batched_inputs, images.image_sizes
            ):
                height = input_per_image.get("height", image_size[0])
                width = input_per_image.get("width", image_size[1])
                if self.sem_seg_postprocess_before_inference:
                    mask_pred = resize_to_output(mask_pred, image_size, height, width)
                    processed_results.append(self.postprocess(mask_cls.to(mask_pred), mask_pred))
                else:
                    sem_seg = self.semantic_inference(mask_cls, mask_pred)
                    processed_results.append({"sem_seg": resize_to_output(sem_seg, image_size, height, width)})
            return processed_results

        images = self.preprocess_image(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.prepare_targets(gt_instances, images)
        else:
            targets = None
        losses = self.criterion(outputs, targets)
        weight_dict = self.criterion.weight_dict
        return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

    def predict_masks(self, batched_inputs: List[Dict]):
        """Inference up to the head: (padded ImageList, class logits (N, Q, K+1), mask logits
        (N, Q, H_pad, W_pad) bilinearly upsampled to the padded input size)."""
        images = self.preprocess_image(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        mask_pred_results = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        return images, outputs["pred_logits"], mask_pred_results

    def postprocess(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> Dict:
        """Enabled inference types for one image from class logits (Q, K+1) and mask logits
        (Q, H, W) already at the output size."""
        mask_prob = mask_pred.sigmoid()
        result = {}
        if self.semantic_on:
            result["sem_seg"] = self.semantic_inference(mask_cls, mask_pred, mask_prob)
        if self.panoptic_on:
            result["panoptic_seg"] = self.panoptic_inference(mask_cls, mask_pred, mask_prob)
        if self.instance_on:
            result["instances"] = self.instance_inference(mask_cls, mask_pred, mask_prob)
        return result

    # ------------------------------------------------------------------------------------------
    # inference; ``mask_prob`` (= mask_pred.sigmoid()) may be passed to share it between them
    def semantic_inference(self, mask_cls, mask_pred, mask_prob: Optional[torch.Tensor] = None):
        """Per-class scores (K, H, W): sum over queries of p(class) * p(pixel in mask)."""
        if mask_prob is None:
            mask_prob = mask_pred.sigmoid()
        class_prob = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", class_prob, mask_prob)

    def _thing_ids(self) -> torch.Tensor:
        ids = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None)
        if ids is None:
            raise KeyError(
                f"MaskFormer: metadata of dataset '{getattr(self.metadata, 'name', '?')}' (DATASETS.TRAIN[0], "
                "or DATASETS.TEST[0] when there is no training set) has no 'thing_dataset_id_to_contiguous_id', needed by panoptic/instance inference"
            )
        return torch.as_tensor(sorted(set(ids.values())), dtype=torch.int64)

    def panoptic_inference(self, mask_cls, mask_pred, mask_prob: Optional[torch.Tensor] = None):
        """Non-overlapping segments (segment-id map int32 (H, W), segments_info).

        Queries whose best class is "no object" or whose probability is at most
        ``object_mask_threshold`` are dropped; each pixel goes to the query maximising
        p(class) * p(mask); a segment keeps the pixels it wins where its own mask probability is
        >= 0.5, and is dropped if those are fewer than ``overlap_threshold`` of its full mask.
        Segments of the same stuff class are merged into one id.
        """
        if mask_prob is None:
            mask_prob = mask_pred.sigmoid()
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        keep = labels.ne(self.sem_seg_head.num_classes) & (scores > self.object_mask_threshold)
        kept_queries = keep.nonzero()[:, 0].tolist()
        h, w = mask_prob.shape[-2:]
        panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_prob.device)
        segments_info = []
        if not kept_queries:
            return panoptic_seg, segments_info

        # Per pixel: the first kept query maximising score * mask probability (= argmax over the
        # kept queries, which returns the first maximum), and that query's own mask probability.
        # A running maximum over queries is much faster on CPU than argmax along dim 0.
        cur_scores = scores[keep].tolist()
        first = kept_queries[0]
        best_value = cur_scores[0] * mask_prob[first]
        owner = torch.zeros((h, w), dtype=torch.int64, device=mask_prob.device)
        owner_prob = mask_prob[first].clone()
        original_area = [int((mask_prob[first] >= 0.5).sum())]
        for k, query in enumerate(kept_queries[1:], start=1):
            value = cur_scores[k] * mask_prob[query]
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            owner.masked_fill_(better, k)
            owner_prob = torch.where(better, mask_prob[query], owner_prob)
            original_area.append(int((mask_prob[query] >= 0.5).sum()))
        owner_in_mask = owner_prob >= 0.5
        num_kept = len(kept_queries)
        flat_owner = owner.flatten()
        counts = torch.zeros(num_kept, dtype=torch.int64)
        mask_area = counts.index_add(0, flat_owner, torch.ones_like(flat_owner)).tolist()
        visible_area = counts.index_add(0, flat_owner, owner_in_mask.flatten().long()).tolist()

        thing_ids = set(self._thing_ids().tolist())
        segment_of_query = [0] * num_kept
        stuff_segment = {}
        current_segment_id = 0
        for k, pred_class in enumerate(labels[keep].tolist()):
            if not (mask_area[k] > 0 and original_area[k] > 0 and visible_area[k] > 0):
                continue
            if mask_area[k] / original_area[k] < self.overlap_threshold:
                continue
            isthing = pred_class in thing_ids
            if not isthing and pred_class in stuff_segment:
                segment_of_query[k] = stuff_segment[pred_class]
                continue
            current_segment_id += 1
            if not isthing:
                stuff_segment[pred_class] = current_segment_id
            segment_of_query[k] = current_segment_id
            segments_info.append(
                {"id": current_segment_id, "isthing": bool(isthing), "category_id": int(pred_class)}
            )

        lookup = torch.as_tensor(segment_of_query, dtype=torch.int32, device=panoptic_seg.device)
        panoptic_seg = torch.where(owner_in_mask, lookup[owner], panoptic_seg)
        return panoptic_seg, segments_info

    def instance_inference(self, mask_cls, mask_pred, mask_prob: Optional[torch.Tensor] = None):
        """Top-k (query, class) pairs as :class:`Instances` (things only when panoptic is on).

        score = p(class) * mean mask probability inside the binary mask (logit > 0).
        """
        image_size = mask_pred.shape[-2:]
        num_classes = self.sem_seg_head.num_classes
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]
        num_queries = scores.shape[0]
        labels = torch.arange(num_classes, device=scores.device).repeat(num_queries)
        topk = min(self.test_topk_per_image, scores.numel())
        scores_per_image, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
        labels_per_image = labels[topk_indices]
        query_indices = topk_indices // num_classes

        if self.panoptic_on:
            keep = torch.isin(labels_per_image, self._thing_ids().to(labels_per_image.device))
            scores_per_image = scores_per_image[keep]
            labels_per_image = labels_per_image[keep]
            query_indices = query_indices[keep]

        # Mask statistics once per distinct query, not per (query, class) pair: a query often
        # appears with several classes, and every pass over full-size masks is costly.
        unique_queries, position = torch.unique(query_indices, return_inverse=True)
        if len(unique_queries) == len(query_indices):
            unique_queries, position = query_indices, None
        in_mask = mask_pred[unique_queries] > 0
        if mask_prob is None:
            unique_prob = mask_pred[unique_queries].sigmoid()
        else:
            unique_prob = mask_prob[unique_queries]
        binary = in_mask.to(unique_prob.dtype)
        flat_binary = binary.flatten(1)
        mask_scores = (unique_prob.flatten(1) * flat_binary).sum(1) / (flat_binary.sum(1) + 1e-6)
        boxes = masks_to_boxes(in_mask)
        if position is not None:
            binary, mask_scores, boxes = binary[position], mask_scores[position], boxes[position]

        result = Instances(image_size)
        result.pred_masks = binary
        result.pred_boxes = Boxes(boxes)
        result.scores = scores_per_image * mask_scores
        result.pred_classes = labels_per_image
        return result
