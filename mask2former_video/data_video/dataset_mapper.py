"""
Dataset mappers of the video model: a video record (or a COCO image) -> a clip of frames.

Output of both mappers::

    {"image": [T CxHxW uint8 tensors], "instances": [T Instances] (training),
     "file_names", "height", "width", "length", "video_id", "frame_idx": [T indices into the video]}

Every frame's ``Instances`` lists the clip's object tracks in one order (track i is row i in every
frame): ``gt_ids`` (the json's track id, -1 in frames where the track is not visible),
``gt_classes`` (contiguous id; -1 in frames where the track is not annotated), ``gt_masks``
(BitMasks, all-False where absent) and ``gt_boxes`` (from the masks).
"""
import copy
import logging
import random

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, Boxes, Instances

from mask2former.data.dataset_mappers.common import annotation_masks, image_to_tensor

from .augmentation import apply_clip_augmentations, build_clip_augmentation

__all__ = ["YTVISDatasetMapper", "CocoClipDatasetMapper", "sample_frame_indices", "clip_instances"]

logger = logging.getLogger(__name__)


def sample_frame_indices(video_length, num_frames, frame_range, shuffle=False, rng=None):
    """
    Training frames of a video, as upstream: a random reference frame plus `num_frames` - 1 frames
    drawn (with replacement) from the frames at most `frame_range` away from it, other than the
    reference itself; sorted by time unless `shuffle`.
    """
    rng = rng if rng is not None else np.random
    reference = int(rng.randint(video_length))
    others = [i for i in range(max(0, reference - frame_range), min(video_length, reference + frame_range + 1))]
    others.remove(reference)
    if not others:  # a one-frame video: the clip repeats its only frame
        others = [reference]
    chosen = sorted([int(i) for i in rng.choice(others, num_frames - 1)] + [reference])
    if shuffle:
        random.shuffle(chosen)
    return chosen


def clip_instances(frame_annotations, transforms, image_shapes, track_ids=None):
    """
    One Instances per frame, with the tracks of the clip in one order (see the module docstring).

    Args:
        frame_annotations (list[list[dict]]): each frame's objects (untransformed), with ``id``.
        transforms (list[TransformList]): each frame's transforms.
        image_shapes (list): (H, W) of each augmented frame (they differ when the size is drawn
            per frame; the model pads the frames of a clip to one size).
        track_ids (list): the track order; default: the ids seen in the clip, in order of appearance.
    """
    if track_ids is None:
        track_ids = []
        for objects in frame_annotations:
            track_ids += [obj["id"] for obj in objects if obj["id"] not in track_ids]
    row = {track_id: i for i, track_id in enumerate(track_ids)}
    frames = []
    for objects, transform, image_shape in zip(frame_annotations, transforms, image_shapes):
        height, width = image_shape
        ids = torch.full((len(track_ids),), -1, dtype=torch.int64)
        classes = torch.full((len(track_ids),), -1, dtype=torch.int64)
        masks = torch.zeros((len(track_ids), height, width), dtype=torch.bool)
        for obj in objects:
            if obj.get("iscrowd", 0) or obj["id"] not in row:
                continue
            obj = utils.transform_instance_annotations(copy.deepcopy(obj), transform, image_shape)
            i = row[obj["id"]]
            classes[i] = obj["category_id"]
            masks[i] = torch.as_tensor(annotation_masks([obj], height, width)[0])
            # An object the crop removed counts as not visible in this frame, as in upstream.
            ids[i] = obj["id"] if masks[i].any() else -1
        instances = Instances(image_shape)
        instances.gt_ids = ids
        instances.gt_classes = classes
        instances.gt_masks = BitMasks(masks)
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes() if len(track_ids) else Boxes(torch.zeros(0, 4))
        frames.append(instances)
    return frames


class YTVISDatasetMapper:
    """
    Reads and augments the frames of a video record (from ``load_ytvis_json``). Training: a clip
    of ``INPUT.SAMPLING_FRAME_NUM`` frames (:func:`sample_frame_indices`) with their instances;
    inference: every frame, resized to ``INPUT.MIN_SIZE_TEST``, without annotations.
    """

    @configurable
    def __init__(
        self,
        is_train=True,
        *,
        augmentations,
        image_format,
        sampling_frame_num=2,
        sampling_frame_range=5,
        sampling_frame_shuffle=False,
    ):
        self.is_train = is_train
        self.augmentations = augmentations
        self.image_format = image_format
        self.sampling_frame_num = sampling_frame_num
        self.sampling_frame_range = sampling_frame_range
        self.sampling_frame_shuffle = sampling_frame_shuffle
        logger.info(f"[{type(self).__name__}] Augmentations used in {'training' if is_train else 'inference'}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_clip_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "sampling_frame_num": cfg.INPUT.SAMPLING_FRAME_NUM,
            "sampling_frame_range": cfg.INPUT.SAMPLING_FRAME_RANGE,
            "sampling_frame_shuffle": cfg.INPUT.SAMPLING_FRAME_SHUFFLE,
        }

    def _read_frames(self, dataset_dict, indices):
        images = []
        for index in indices:
            file_name = dataset_dict["file_names"][index]
            image = utils.read_image(file_name, format=self.image_format)
            utils.check_image_size(dataset_dict, image)
            images.append(image)
        return images

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        length = dataset_dict["length"]
        if self.is_train:
            indices = sample_frame_indices(
                length, self.sampling_frame_num, self.sampling_frame_range, self.sampling_frame_shuffle
            )
        else:
            indices = list(range(length))
        images = self._read_frames(dataset_dict, indices)
        transforms = apply_clip_augmentations(self.augmentations, images)
        dataset_dict["image"] = [image_to_tensor(image) for image in images]
        dataset_dict["frame_idx"] = indices
        annotations = dataset_dict.pop("annotations", None)
        if not self.is_train:
            return dataset_dict
        if annotations is None:
            raise ValueError(f"Video {dataset_dict.get('video_id')} has no 'annotations' to train on.")
        dataset_dict["instances"] = clip_instances(
            [annotations[i] for i in indices], transforms, [image.shape[:2] for image in images]
        )
        return dataset_dict


class CocoClipDatasetMapper(YTVISDatasetMapper):
    """
    A COCO image (instance annotations) as a pseudo-clip for training the video model: the image
    repeated ``INPUT.SAMPLING_FRAME_NUM`` times, each copy augmented on its own (a different size,
    crop or flip per copy imitates camera motion); the objects are the tracks, with ids 0..N-1.
    """

    def __call__(self, dataset_dict):
        if not self.is_train:
            raise ValueError("CocoClipDatasetMapper builds training clips only.")
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        objects = [dict(obj, id=i) for i, obj in enumerate(dataset_dict.pop("annotations", []))]
        images = [image.copy() for _ in range(self.sampling_frame_num)]
        transforms = apply_clip_augmentations(self.augmentations, images, per_frame=True)
        dataset_dict["image"] = [image_to_tensor(frame) for frame in images]
        dataset_dict["instances"] = clip_instances(
            [objects] * len(images), transforms, [frame.shape[:2] for frame in images], track_ids=list(range(len(objects)))
        )
        dataset_dict["file_names"] = [dataset_dict["file_name"]] * self.sampling_frame_num
        dataset_dict["length"] = self.sampling_frame_num
        dataset_dict.setdefault("video_id", dataset_dict.get("image_id"))
        dataset_dict["frame_idx"] = [0] * self.sampling_frame_num
        return dataset_dict
