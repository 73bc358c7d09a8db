"""Evaluators for every upstream benchmark, built on the reference libraries (Detectron2's
evaluators, pycocotools, panopticapi, cityscapesscripts).

``build_evaluator(cfg, dataset_name, output_folder)`` picks them from the dataset's
``evaluator_type`` metadata exactly as upstream's ``train_net.py`` does.
"""
from .build import build_evaluator
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .instance_evaluation import InstanceSegEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator, pq_from_files
from .sem_seg_evaluation import SemSegEvaluator

__all__ = [
    "build_evaluator",
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "COCOEvaluator",
    "COCOPanopticEvaluator",
    "InstanceSegEvaluator",
    "SemSegEvaluator",
    "pq_from_files",
]
