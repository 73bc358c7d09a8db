"""Deployment-side runner: an exported ONNX network, run by onnxruntime, plus the PyTorch model's own
pre- and post-processing.

Pre-processing is what Detectron2's ``DefaultPredictor`` and the model do: convert the BGR image
to INPUT.FORMAT, resize the shortest edge to INPUT.MIN_SIZE_TEST (longest edge at most
INPUT.MAX_SIZE_TEST), pad to the model's size divisibility; normalisation happens inside the
exported network (the padding is filled with the pixel mean, which normalises to the model's
zero padding). Post-processing is :func:`mask2former.modeling.postprocessing.postprocess_image`,
the same function the PyTorch model calls.
"""
import os
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..modeling import postprocessing

__all__ = ["OnnxPredictor", "postprocess_settings_from_config"]


def postprocess_settings_from_config(cfg) -> postprocessing.PostProcessSettings:
    """The settings MaskFormer.from_config gives the model, read from the config."""
    mf = cfg.MODEL.MASK_FORMER
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    return postprocessing.PostProcessSettings(
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        semantic_on=mf.TEST.SEMANTIC_ON,
        panoptic_on=mf.TEST.PANOPTIC_ON,
        instance_on=mf.TEST.INSTANCE_ON,
        object_mask_threshold=mf.TEST.OBJECT_MASK_THRESHOLD,
        overlap_threshold=mf.TEST.OVERLAP_THRESHOLD,
        topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        sem_seg_postprocess_before_inference=(
            mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or mf.TEST.PANOPTIC_ON or mf.TEST.INSTANCE_ON
        ),
        thing_ids=postprocessing.thing_ids_from_metadata(metadata),
        dataset_name=cfg.DATASETS.TRAIN[0],
    )


class OnnxPredictor:
    """Like Detectron2's DefaultPredictor, for an ONNX file written by tools/export_model.py:
    ``predictor(image_bgr)`` -> the model's results dict for one HxWx3 uint8 BGR image.

    Args:
        cfg: the config the model was exported from.
        onnx_path: the .onnx file.
        threads: onnxruntime intra-op threads (0: its default).
        size_divisibility: padding multiple (default: MODEL.MASK_FORMER.SIZE_DIVISIBILITY, or 32
            when that is negative, the backbones' value).
    """

    def __init__(self, cfg, onnx_path: str, threads: int = 0, size_divisibility: Optional[int] = None):
        import onnxruntime as ort

        if not os.path.isfile(onnx_path):
            raise FileNotFoundError(f"--onnx {onnx_path}: no such file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.cfg = cfg.clone()
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"OnnxPredictor: INPUT.FORMAT {self.input_format!r} is not supported (RGB or BGR)")
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        if size_divisibility is None:
            size_divisibility = cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY
            if size_divisibility < 0:
                size_divisibility = 32
        self.size_divisibility = max(int(size_divisibility), 1)
        self.pixel_mean = np.asarray(cfg.MODEL.PIXEL_MEAN, dtype=np.float32)
        self.settings = postprocess_settings_from_config(cfg)
        shape = self.session.get_inputs()[0].shape  # [1, C, H, W]; str or None for dynamic axes
        self.fixed_size = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None

    def padded_input(self, image: np.ndarray) -> np.ndarray:
        """(1, C, H_pad, W_pad) float32 from an HxWxC image already in INPUT.FORMAT and resized."""
        height, width = image.shape[:2]
        stride = self.size_divisibility
        padded_h, padded_w = -(-height // stride) * stride, -(-width // stride) * stride
        if self.fixed_size is not None and (padded_h, padded_w) != self.fixed_size:
            raise ValueError(
                f"OnnxPredictor: the ONNX file was exported for {self.fixed_size[0]}x{self.fixed_size[1]} inputs, "
                f"but this image pads to {padded_h}x{padded_w} (after resizing to {height}x{width}); export with "
                "--dynamic, or with --height/--width matching the padded size"
            )
        batch = np.empty((1, image.shape[2], padded_h, padded_w), dtype=np.float32)
        batch[0] = self.pixel_mean[:, None, None]
        batch[0, :, :height, :width] = image.transpose(2, 0, 1)
        return batch

    def run_network(self, batch: np.ndarray):
        class_logits, mask_logits = self.session.run(None, {"image": batch})
        return torch.from_numpy(class_logits), torch.from_numpy(mask_logits)

    def __call__(self, original_image: np.ndarray) -> Dict:
        """``original_image``: HxWx3 uint8 in BGR order (as cv2.imread gives)."""
        if original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(f"OnnxPredictor: expected an HxWx3 BGR image, got shape {original_image.shape}")
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        return self.predict_resized(image, height, width)

    def predict_resized(self, image: np.ndarray, height: int, width: int) -> Dict:
        """Results at (height, width) for an HxWxC image already in INPUT.FORMAT and resized (what
        the PyTorch model receives as ``image``)."""
        batch = self.padded_input(image.astype(np.float32))
        class_logits, mask_logits = self.run_network(batch)
        mask_pred = postprocessing.upsample_masks(mask_logits, batch.shape[-2:])
        with torch.inference_mode():
            return postprocessing.postprocess_image(
                class_logits[0], mask_pred[0], image.shape[:2], height, width, self.settings
            )
