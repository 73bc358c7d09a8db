"""The photometric augmentation of SSD (Liu et al., ECCV 2016), used by MaskFormer's mappers.

Random brightness, then contrast/saturation/hue (contrast first or last, at random), each applied
with probability 1/2, on the image only: segmentation and coordinates are unchanged.
"""
import cv2
import numpy as np
from fvcore.transforms.transform import Transform

__all__ = ["ColorAugSSDTransform", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"]


def _scale_and_shift(values, alpha=1.0, beta=0.0):
    """alpha * values + beta, clipped to [0, 255], as uint8 (values are uint8)."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def adjust_brightness(image, delta):
    """Add `delta` to every channel of a uint8 image."""
    return _scale_and_shift(image, beta=delta)


def adjust_contrast(image, factor):
    """Multiply every channel of a uint8 image by `factor` (SSD's contrast: no mean subtraction)."""
    return _scale_and_shift(image, alpha=factor)


def adjust_saturation(image_bgr, factor):
    """Multiply the HSV saturation of a uint8 BGR image by `factor`."""
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = _scale_and_shift(hsv[:, :, 1], alpha=factor)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def adjust_hue(image_bgr, delta):
    """Rotate the hue of a uint8 BGR image by `delta` OpenCV hue units (2 degrees each, period 180)."""
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int64) + delta) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


class ColorAugSSDTransform(Transform):
    """
    SSD's colour augmentation (the one ``INPUT.COLOR_AUG_SSD`` turns on).

    Put it in an augmentation list like any deterministic transform: it draws new random
    parameters (from NumPy's global generator, like Detectron2's augmentations) for every image it
    is applied to, and leaves segmentation masks and coordinates untouched.
    """

    def __init__(
        self,
        img_format,
        brightness_delta=32,
        contrast_low=0.5,
        contrast_high=1.5,
        saturation_low=0.5,
        saturation_high=1.5,
        hue_delta=18,
    ):
        super().__init__()
        if img_format not in ("BGR", "RGB"):
            raise ValueError(f"ColorAugSSDTransform works on BGR or RGB images, not {img_format!r}.")
        self.is_rgb = img_format == "RGB"
        self._set_attributes(
            dict(
                brightness_delta=brightness_delta,
                contrast_low=contrast_low,
                contrast_high=contrast_high,
                saturation_low=saturation_low,
                saturation_high=saturation_high,
                hue_delta=hue_delta,
            )
        )

    def apply_image(self, img, interp=None):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"ColorAugSSDTransform expects an HxWx3 uint8 image, got {img.dtype} {img.shape}.")
        bgr = img[:, :, ::-1] if self.is_rgb else img
        bgr = np.ascontiguousarray(bgr)
        rng = np.random
        if rng.randint(2):
            bgr = adjust_brightness(bgr, rng.uniform(-self.brightness_delta, self.brightness_delta))
        steps = [self._saturation, self._hue]
        steps = [self._contrast] + steps if rng.randint(2) else steps + [self._contrast]
        for step in steps:
            if rng.randint(2):
                bgr = step(bgr, rng)
        return np.ascontiguousarray(bgr[:, :, ::-1]) if self.is_rgb else bgr

    def _contrast(self, bgr, rng):
        return adjust_contrast(bgr, rng.uniform(self.contrast_low, self.contrast_high))

    def _saturation(self, bgr, rng):
        return adjust_saturation(bgr, rng.uniform(self.saturation_low, self.saturation_high))

    def _hue(self, bgr, rng):
        return adjust_hue(bgr, rng.randint(-self.hue_delta, self.hue_delta + 1))

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation
