"""VideoMaskFormer: Mask2Former for video instance segmentation.

Training takes clips of ``INPUT.SAMPLING_FRAME_NUM`` frames; all frames of the batch go through the
backbone and pixel decoder as one batch of images, then the video decoder predicts, per clip, Q
queries each with a class and a (T, H, W) mask. Targets are the clip's tracks (a track counts when
it is present in any frame); see ``MODEL.MASK_FORMER.VIDEO_TARGET_CLASS`` for their class.

Inference runs on one whole video at a time and returns the top 10 (query, class) pairs of the
video by softmax score (without "no object"), each with a (T, H, W) boolean mask at the original
size: the mask logits upsampled to the padded input size, cropped to the unpadded size, resized to
the original size and thresholded at 0. Unlike the reference implementation, which upsamples all
Q masks to the input size before choosing, only the kept queries are upsampled (one at a time):
the results are identical, and memory no longer grows with Q x T x H x W.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, ImageList

from mask2former.maskformer_model import MaskFormer, resize_to_output

from .config import TARGET_CLASS_RULES
from .modeling.criterion import VideoSetCriterion
from .modeling.matcher import VideoHungarianMatcher

# Instances kept per video at inference (the reference implementation's fixed value).
TEST_TOPK_PER_VIDEO = 10


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    # The CPU allocator reports a failed allocation as a plain RuntimeError.
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@META_ARCH_REGISTRY.register()
class VideoMaskFormer(MaskFormer):
    matcher_class = VideoHungarianMatcher
    criterion_class = VideoSetCriterion

    @configurable
    def __init__(
        self,
        *,
        backbone,
        sem_seg_head,
        criterion,
        num_queries: int,
        metadata,
        size_divisibility: int,
        pixel_mean,
        pixel_std,
        num_frames: int,
        target_class: str = "last_frame",
        max_num_frames: int = 0,
        frames_per_batch: int = 0,
    ):
        """
        Args:
            backbone, sem_seg_head, criterion, num_queries, metadata, size_divisibility,
                pixel_mean, pixel_std: as :class:`MaskFormer`.
            num_frames: frames per training clip.
            target_class: "last_frame" or "any_frame", see MODEL.MASK_FORMER.VIDEO_TARGET_CLASS.
            max_num_frames: inference refuses longer videos (0: no limit).
            frames_per_batch: at inference, frames run through backbone and pixel decoder at once
                (0: all).
        """
        super().__init__(
            backbone=backbone,
            sem_seg_head=sem_seg_head,
            criterion=criterion,
            num_queries=num_queries,
            object_mask_threshold=0.0,
            overlap_threshold=0.0,
            metadata=metadata,
            size_divisibility=size_divisibility,
            sem_seg_postprocess_before_inference=True,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            semantic_on=False,
            panoptic_on=False,
            instance_on=True,
            test_topk_per_image=TEST_TOPK_PER_VIDEO,
        )
        if target_class not in TARGET_CLASS_RULES:
            raise ValueError(
                f"MODEL.MASK_FORMER.VIDEO_TARGET_CLASS must be one of {TARGET_CLASS_RULES}, got {target_class!r}"
            )
        if max_num_frames < 0 or frames_per_batch < 0:
            raise ValueError(
                "MODEL.MASK_FORMER.TEST.MAX_NUM_FRAMES and FRAMES_PER_BATCH must be >= 0 (0: no limit), "
                f"got {max_num_frames} and {frames_per_batch}"
            )
        self.num_frames = num_frames
        self.target_class = target_class
        self.max_num_frames = max_num_frames
        self.frames_per_batch = frames_per_batch

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        for key in (
            "object_mask_threshold",
            "overlap_threshold",
            "sem_seg_postprocess_before_inference",
            "semantic_on",
            "panoptic_on",
            "instance_on",
            "test_topk_per_image",
        ):
            del ret[key]
        mf = cfg.MODEL.MASK_FORMER
        ret.update(
            num_frames=cfg.INPUT.SAMPLING_FRAME_NUM,
            target_class=mf.VIDEO_TARGET_CLASS,
            max_num_frames=mf.TEST.MAX_NUM_FRAMES,
            frames_per_batch=mf.TEST.FRAMES_PER_BATCH,
        )
        return ret

    # ------------------------------------------------------------------------------------------
    # input
    def _video_frames(self, video: Dict, index: int, same_size: bool) -> List[torch.Tensor]:
        """The checked frames of ``batched_inputs[index]``. Training clips may mix frame sizes
        (per-frame resizing; padding and the per-frame targets handle it); inference needs one
        size, as the video's masks are resized to one output size."""
        frames = video.get("image")
        name = f"batched_inputs[{index}] (video {video.get('video_id', '?')})"
        if not isinstance(frames, (list, tuple)) or len(frames) == 0:
            raise ValueError(f"VideoMaskFormer: {name}: 'image' must be a non-empty list of (C, H, W) frames")
        frames = [self._check_image(frame, index) for frame in frames]
        sizes = {tuple(frame.shape[-2:]) for frame in frames}
        if same_size and len(sizes) > 1:
            raise ValueError(f"VideoMaskFormer: {name}: its frames differ in size: {sorted(sizes)}")
        return frames

    def _normalize(self, frames: List[torch.Tensor]) -> List[torch.Tensor]:
        return [(frame.to(self.device) - self.pixel_mean) / self.pixel_std for frame in frames]

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Per clip: "labels" (N,), "ids" (N, T) and "masks" (N, T, H_pad, W_pad) float of its N
        tracks present in at least one frame."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for index, video in enumerate(batched_inputs):
            frames = video["instances"]
            num_tracks = len(frames[0])
            if any(len(frame) != num_tracks for frame in frames):
                raise ValueError(
                    f"VideoMaskFormer: batched_inputs[{index}] (video {video.get('video_id', '?')}): every "
                    f"frame's Instances must list the same tracks in the same order (gt_ids -1 where absent); "
                    f"got {[len(frame) for frame in frames]} instances"
                )
            masks = torch.zeros((num_tracks, len(frames), h_pad, w_pad), dtype=torch.bool, device=self.device)
            for t, frame in enumerate(frames):
                frame_masks = frame.gt_masks
                if isinstance(frame_masks, BitMasks):
                    frame_masks = frame_masks.tensor
                h, w = frame_masks.shape[-2:]
                masks[:, t, :h, :w] = frame_masks.to(self.device, torch.bool)
            ids = torch.stack([frame.gt_ids.to(self.device) for frame in frames], dim=1)  # (N, T)
            present = ids != -1
            classes = torch.stack([frame.gt_classes.to(self.device) for frame in frames], dim=1)
            if self.target_class == "last_frame":
                # Upstream's rule: a track absent from the last frame has no class there and is a
                # "no object" (class K) target.
                labels = torch.where(present[:, -1], classes[:, -1], self.sem_seg_head.num_classes)
            else:
                first_present = present.to(torch.uint8).argmax(dim=1)
                labels = classes.gather(1, first_present[:, None])[:, 0]
            valid = present.any(dim=1)
            targets.append({"labels": labels[valid], "ids": ids[valid], "masks": masks[valid].float()})
        return targets

    # ------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: list of dicts (YTVISDatasetMapper format): "image", a list of T frames
                (C, H, W); for training "instances", a list of T Instances with gt_ids, gt_classes
                and gt_masks; for inference optionally "height", "width" (output size).
        Returns:
            training: dict of weighted losses. Inference (one video): dict with "image_size"
            (height, width), "pred_scores" (list of float), "pred_labels" (list of int) and
            "pred_masks" (list of (T, height, width) bool tensors on the CPU).
        """
        if not self.training:
            if len(batched_inputs) != 1:
                raise ValueError(
                    f"VideoMaskFormer: inference takes one video at a time, got {len(batched_inputs)} "
                    "(use a test loader with batch size 1)"
                )
            return self.inference(batched_inputs[0])

        frames = []
        for index, video in enumerate(batched_inputs):
            video_frames = self._video_frames(video, index, same_size=False)
            if len(video_frames) != self.num_frames:
                raise ValueError(
                    f"VideoMaskFormer: batched_inputs[{index}] has {len(video_frames)} frames; training clips "
                    f"must have INPUT.SAMPLING_FRAME_NUM={self.num_frames}"
                )
            frames += video_frames
        images = ImageList.from_tensors(self._normalize(frames), self.size_divisibility)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        if "instances" not in batched_inputs[0]:
            raise ValueError("VideoMaskFormer: training needs batched_inputs[i]['instances']")
        losses = self.criterion(outputs, self.prepare_targets(batched_inputs, images))
        weight_dict = self.criterion.weight_dict
        return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

    # ------------------------------------------------------------------------------------------
    # inference
    def inference(self, video: Dict) -> Dict:
        frames = self._video_frames(video, 0, same_size=True)
        name = f"video {video.get('video_id', '?')} ({len(frames)} frames of {tuple(frames[0].shape[-2:])})"
        if self.max_num_frames and len(frames) > self.max_num_frames:
            raise ValueError(
                f"VideoMaskFormer: {name} is longer than MODEL.MASK_FORMER.TEST.MAX_NUM_FRAMES="
                f"{self.max_num_frames}. Raise the limit if memory allows, lower INPUT.MIN_SIZE_TEST, or "
                "split the video into shorter ones (instances are then not linked across the parts)."
            )
        try:
            images, pred_logits, pred_masks = self.predict_video(frames)
            image_size = images.image_sizes[0]
            height = video.get("height", image_size[0])
            width = video.get("width", image_size[1])
            return self.inference_video(
                pred_logits, pred_masks, image_size, tuple(images.tensor.shape[-2:]), height, width
            )
        except (RuntimeError, torch.OutOfMemoryError) as e:
            if not _is_out_of_memory(e):
                raise
            raise MemoryError(
                f"VideoMaskFormer: out of memory on {name}. Memory grows with frames x size: set "
                "MODEL.MASK_FORMER.TEST.FRAMES_PER_BATCH (e.g. 8; same results) to run the backbone "
                "and pixel decoder a few frames at a time, lower INPUT.MIN_SIZE_TEST, or cap the "
                "length with MODEL.MASK_FORMER.TEST.MAX_NUM_FRAMES and split longer videos."
            ) from e

    def predict_video(self, frames: List[torch.Tensor]):
        """(padded ImageList, class logits (Q, K+1), mask logits (Q, T, h, w)) of one video."""
        head = self.sem_seg_head
        chunk = self.frames_per_batch or len(frames)
        if chunk >= len(frames):
            images = ImageList.from_tensors(self._normalize(frames), self.size_divisibility)
            outputs = head(self.backbone(images.tensor))
        else:
            if head.transformer_in_feature != "multi_scale_pixel_decoder":
                raise ValueError(
                    "MODEL.MASK_FORMER.TEST.FRAMES_PER_BATCH needs TRANSFORMER_IN_FEATURE "
                    f"'multi_scale_pixel_decoder', got {head.transformer_in_feature!r}"
                )
            # Backbone and pixel decoder see each frame on its own: running them on a few frames
            # at a time gives the same features; only the decoder needs the whole video.
            mask_features, multi_scale = [], None
            for start in range(0, len(frames), chunk):
                images = ImageList.from_tensors(
                    self._normalize(frames[start : start + chunk]), self.size_divisibility
                )
                chunk_mask_features, _, chunk_multi_scale = head.pixel_decoder.forward_features(
                    self.backbone(images.tensor)
                )
                mask_features.append(chunk_mask_features)
                if multi_scale is None:
                    multi_scale = [[level] for level in chunk_multi_scale]
                else:
                    for levels, level in zip(multi_scale, chunk_multi_scale):
                        levels.append(level)
            outputs = head.predictor(
                [torch.cat(levels) for levels in multi_scale], torch.cat(mask_features), None
            )
        return images, outputs["pred_logits"][0], outputs["pred_masks"][0]

    def inference_video(self, pred_logits, pred_masks, image_size, padded_size, height, width) -> Dict:
        """
        Args:
            pred_logits: (Q, K+1) class logits of the video's queries.
            pred_masks: (Q, T, h, w) mask logits at the decoder's resolution.
            image_size: (h_img, w_img) of the frames before padding; padded_size: the padded
                input size (the masks are upsampled to it first, as in training's geometry).
            height, width: output size.
        Returns:
            the inference dict described in :meth:`forward`.
        """
        num_classes = self.sem_seg_head.num_classes
        scores = F.softmax(pred_logits, dim=-1)[:, :-1]
        k = min(TEST_TOPK_PER_VIDEO, scores.numel())
        top_scores, top_indices = scores.flatten().topk(k, sorted=True)
        labels = top_indices % num_classes
        queries = top_indices // num_classes
        out_masks = []
        for query in queries.tolist():
            # One kept query at a time: (T, h, w) -> padded size -> cropped -> output size.
            mask = F.interpolate(pred_masks[query][None], size=padded_size, mode="bilinear", align_corners=False)[0]
            out_masks.append((resize_to_output(mask, image_size, height, width) > 0).cpu())
        return {
            "image_size": (height, width),
            "pred_scores": top_scores.tolist(),
            "pred_labels": labels.tolist(),
            "pred_masks": out_masks,
        }
