"""Run a video Mask2Former on a list of frames and draw its tracked instances."""
import colorsys

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer

from mask2former.utils.checkpoint import Mask2FormerCheckpointer

__all__ = ["VideoPredictor", "track_colors", "draw_video_predictions"]


def track_colors(num_tracks):
    """One distinct RGB colour (0..1 floats, as Visualizer takes them) per track, by golden-ratio hues."""
    return [colorsys.hsv_to_rgb((0.13 + i * 0.618034) % 1.0, 0.85, 0.95) for i in range(num_tracks)]


def draw_video_predictions(frames_rgb, predictions, metadata, score_threshold=0.5, scale=1.0, show_scores=True):
    """
    Draw the model's output for one video (``pred_scores``, ``pred_labels``, ``pred_masks``: one
    (T, H, W) mask per track) on its RGB frames: each track keeps one colour in every frame, labelled
    with its class (and score). Returns the drawn RGB frames.
    """
    kept = [i for i, score in enumerate(predictions["pred_scores"]) if score >= score_threshold]
    colors = track_colors(len(kept))
    classes = metadata.get("thing_classes", None)
    labels = []
    for i in kept:
        label = predictions["pred_labels"][i]
        name = classes[label] if classes is not None and label < len(classes) else str(label)
        labels.append(f"{name} {predictions['pred_scores'][i]:.0%}" if show_scores else name)
    drawn = []
    for t, frame in enumerate(frames_rgb):
        visualizer = Visualizer(frame, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
        masks = [np.asarray(predictions["pred_masks"][i][t]) for i in kept]
        visible = [j for j, mask in enumerate(masks) if mask.any()]
        if visible:
            output = visualizer.overlay_instances(
                masks=[masks[j] for j in visible],
                labels=[labels[j] for j in visible],
                assigned_colors=[colors[j] for j in visible],
            )
        else:
            output = visualizer.output
        drawn.append(output.get_image())
    return drawn


class VideoPredictor:
    """
    Runs the model of `cfg` (weights from MODEL.WEIGHTS; or `model`, e.g. one just trained) on a
    whole video at once (the frames resized as at test time: INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
    """

    def __init__(self, cfg, model=None):
        self.cfg = cfg.clone()
        if model is None:
            model = build_model(self.cfg)
            if cfg.MODEL.WEIGHTS:
                Mask2FormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        self.model = model
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(dataset)
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, frames_rgb):
        """frames_rgb: list of HxWx3 uint8 RGB frames of one size. Returns the model's output dict."""
        self.model.eval()
        height, width = frames_rgb[0].shape[:2]
        transform = self.resize.get_transform(frames_rgb[0])
        images = []
        for frame in frames_rgb:
            if frame.shape[:2] != (height, width):
                raise ValueError(f"All frames of a video must have one size: {frame.shape[:2]} != {(height, width)}.")
            frame = transform.apply_image(frame)
            if self.input_format == "BGR":
                frame = frame[:, :, ::-1]
            images.append(torch.as_tensor(np.ascontiguousarray(frame.transpose(2, 0, 1))))
        return self.model([{"image": images, "height": height, "width": width}])
