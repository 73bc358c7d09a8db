"""
Augmentations of a clip: which are drawn once per clip and which once per frame.

A video model matches one query to an object over all frames of a clip, so geometry that differs
between frames would look like motion. Following upstream's options:

* ``INPUT.MIN_SIZE_TRAIN_SAMPLING``: ``"choice_by_clip"`` / ``"range_by_clip"`` draw the size once
  per clip; ``"choice"`` / ``"range"`` once per frame;
* ``INPUT.RANDOM_FLIP``: ``"flip_by_clip"`` flips all frames or none; ``"horizontal"`` /
  ``"vertical"`` decide per frame; ``"none"``;
* ``INPUT.CROP``: one crop window per clip (the frames of a video have one size);
* ``INPUT.AUGMENTATIONS``: ``"brightness"``, ``"contrast"``, ``"saturation"`` (factors in
  [0.9, 1.1]) and ``"rotation"`` (-15..15 degrees about a point near the centre), drawn per frame
  as upstream does.
"""
from detectron2.data import transforms as T

__all__ = ["ClipAugmentation", "build_clip_augmentation", "apply_clip_augmentations"]

_SIZE_STYLES = {"choice": False, "range": False, "choice_by_clip": True, "range_by_clip": True}
_EXTRA = ("brightness", "contrast", "saturation", "rotation")


class ClipAugmentation:
    """An augmentation and whether one draw is shared by all frames of a clip."""

    def __init__(self, augmentation, per_clip):
        self.augmentation = augmentation
        self.per_clip = per_clip

    def __repr__(self):
        return f"{self.augmentation!r} ({'per clip' if self.per_clip else 'per frame'})"


def build_clip_augmentation(cfg, is_train):
    """The list of :class:`ClipAugmentation` of the video mappers (test: one resize for all frames)."""
    if not is_train:
        return [ClipAugmentation(T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"), True)]
    augmentations = []
    if cfg.INPUT.CROP.ENABLED:
        augmentations.append(ClipAugmentation(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE), True))

    style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    if style not in _SIZE_STYLES:
        raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be one of {sorted(_SIZE_STYLES)}, got {style!r}.")
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, style.replace("_by_clip", ""))
    augmentations.append(ClipAugmentation(resize, _SIZE_STYLES[style]))

    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("none", "horizontal", "vertical", "flip_by_clip"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be none, horizontal, vertical or flip_by_clip, got {flip!r}.")
    if flip != "none":
        random_flip = T.RandomFlip(horizontal=flip != "vertical", vertical=flip == "vertical")
        augmentations.append(ClipAugmentation(random_flip, flip == "flip_by_clip"))

    extra = list(cfg.INPUT.AUGMENTATIONS)
    unknown = sorted(set(extra) - set(_EXTRA))
    if unknown:
        raise ValueError(f"INPUT.AUGMENTATIONS has unknown entries {unknown}; known: {list(_EXTRA)}.")
    if "brightness" in extra:
        augmentations.append(ClipAugmentation(T.RandomBrightness(0.9, 1.1), False))
    if "contrast" in extra:
        augmentations.append(ClipAugmentation(T.RandomContrast(0.9, 1.1), False))
    if "saturation" in extra:
        augmentations.append(ClipAugmentation(T.RandomSaturation(0.9, 1.1), False))
    if "rotation" in extra:
        rotation = T.RandomRotation([-15, 15], expand=False, center=[(0.4, 0.4), (0.6, 0.6)], sample_style="range")
        augmentations.append(ClipAugmentation(rotation, False))
    return augmentations


def apply_clip_augmentations(augmentations, images, per_frame=False):
    """
    Augment the frames of a clip (HxWxC arrays, in place of the list given).

    A per-clip augmentation is drawn on the first frame and the same transform is applied to all
    frames; a per-frame one is drawn for each frame. `per_frame=True` draws every augmentation per
    frame (a pseudo-clip made of one image). Returns one TransformList per frame.
    """
    transforms = [[] for _ in images]
    for entry in augmentations:
        shared = None
        for index, image in enumerate(images):
            if shared is None or per_frame or not entry.per_clip:
                aug_input = T.AugInput(image)
                transform = entry.augmentation(aug_input)
                images[index] = aug_input.image
                shared = transform
            else:
                images[index] = shared.apply_image(image)
            transforms[index].append(shared)
    return [T.TransformList(t) for t in transforms]
