"""Run a Mask2Former model on images and draw its predictions with Detectron2's Visualizer."""
import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.engine.defaults import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from mask2former import model_zoo
from mask2former.engine import setup_for_inference
from mask2former.utils.checkpoint import Mask2FormerCheckpointer

__all__ = ["config_from_args", "draw_predictions", "tile_horizontally", "VisualizationDemo"]


def config_from_args(config_file=None, model=None, opts=()):
    """
    The frozen config of a demo: from `config_file`, or from model-zoo name `model` (whose
    published weights become MODEL.WEIGHTS unless `opts` set it), plus `opts` overrides; on the
    CPU when there is no GPU, with DATASETS.CUSTOM registered and weights/datasets checked.
    """
    if model:
        opts = ["MODEL.WEIGHTS", model_zoo.get_checkpoint_url(model), *opts]
        config_file = model_zoo.get_config_file(model)
    return setup_for_inference(config_file, opts)


def draw_predictions(
    image_rgb, predictions, metadata, score_threshold=0.5, instance_mode=ColorMode.IMAGE, scale=1.0
):
    """
    Draw every kind of output in `predictions` (a model output dict for one image).

    Returns a dict with one RGB uint8 image per output present, under the keys "panoptic",
    "instance" (instances scoring at least `score_threshold`) and "semantic", each `scale` times
    the size of the image.
    """
    panels = {}
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        visualizer = Visualizer(image_rgb, metadata, instance_mode=instance_mode, scale=scale)
        panels["panoptic"] = visualizer.draw_panoptic_seg(
            panoptic_seg.to("cpu"), segments_info
        ).get_image()
    if "instances" in predictions:
        instances = predictions["instances"].to("cpu")
        instances = instances[instances.scores >= score_threshold]
        visualizer = Visualizer(image_rgb, metadata, instance_mode=instance_mode, scale=scale)
        panels["instance"] = visualizer.draw_instance_predictions(instances).get_image()
    if "sem_seg" in predictions:
        labels = predictions["sem_seg"].argmax(dim=0).to("cpu")
        visualizer = Visualizer(image_rgb, metadata, instance_mode=instance_mode, scale=scale)
        panels["semantic"] = visualizer.draw_sem_seg(labels).get_image()
    return panels


def tile_horizontally(images, gap=4):
    """Put RGB images of the same height side by side, separated by white gaps."""
    height = max(image.shape[0] for image in images)
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    columns = []
    for image in images:
        if image.shape[0] < height:
            pad = np.full((height - image.shape[0], image.shape[1], 3), 255, dtype=np.uint8)
            image = np.concatenate([image, pad], axis=0)
        columns.extend([image, spacer])
    return np.concatenate(columns[:-1], axis=1)


class VisualizationDemo:
    """Loads the model of `cfg` (weights from MODEL.WEIGHTS) and visualises its predictions."""

    def __init__(self, cfg, score_threshold=0.5, instance_mode=ColorMode.IMAGE, predictor=None):
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(dataset)
        self.score_threshold = score_threshold
        self.instance_mode = instance_mode
        # Any callable image_bgr -> results dict, e.g. mask2former.export.OnnxPredictor.
        self.predictor = predictor
        if predictor is None:
            # DefaultPredictor's own loader would accept a checkpoint that fits only in part; load
            # with the checkpointer that refuses it instead.
            random_init = cfg.clone()
            random_init.defrost()
            random_init.MODEL.WEIGHTS = ""
            self.predictor = DefaultPredictor(random_init)
            if cfg.MODEL.WEIGHTS:
                Mask2FormerCheckpointer(self.predictor.model).load(cfg.MODEL.WEIGHTS)

    @torch.no_grad()
    def run_on_image(self, image_bgr):
        """
        Args:
            image_bgr (np.ndarray): an HxWx3 uint8 image in BGR order (as `cv2.imread` reads it).

        Returns:
            predictions (dict): the model's output for the image.
            panels (dict[str, np.ndarray]): RGB drawings, see :func:`draw_predictions`.
        """
        predictions = self.predictor(image_bgr)
        panels = draw_predictions(
            image_bgr[:, :, ::-1], predictions, self.metadata, self.score_threshold, self.instance_mode
        )
        return predictions, panels
