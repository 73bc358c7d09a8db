"""Pick the evaluators of a dataset from its ``evaluator_type``, as upstream's train_net.py does."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators, LVISEvaluator
from detectron2.utils import comm

from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .instance_evaluation import InstanceSegEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator
from .sem_seg_evaluation import SemSegEvaluator

__all__ = ["build_evaluator", "PANOPTIC_EVALUATOR_TYPES"]

PANOPTIC_EVALUATOR_TYPES = (
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "cityscapes_panoptic_seg",
    "mapillary_vistas_panoptic_seg",
)


def _check_single_machine(dataset_name):
    # cityscapesscripts reads every rank's predictions from one temporary folder of the main
    # process, so all ranks must share a file system (upstream asserted one GPU per rank instead,
    # which would also reject CPU-only runs).
    if comm.get_world_size() != comm.get_local_size():
        raise RuntimeError(
            f"The Cityscapes evaluators for '{dataset_name}' only work when every process runs on "
            f"one machine (world size {comm.get_world_size()}, local size {comm.get_local_size()})."
        )


def build_evaluator(cfg, dataset_name, output_folder=None):
    """Evaluator(s) for ``dataset_name``, chosen as upstream Mask2Former's ``build_evaluator``.

    By ``MetadataCatalog.get(dataset_name).evaluator_type``:

    * ``sem_seg``: :class:`SemSegEvaluator` (mIoU, fwIoU, mACC, pACC);
    * ``coco``: :class:`COCOEvaluator` (instance AP);
    * ``coco_panoptic_seg``: ``COCOPanopticEvaluator`` if ``MODEL.MASK_FORMER.TEST.PANOPTIC_ON``,
      plus COCOEvaluator if ``INSTANCE_ON``, plus SemSegEvaluator if ``SEMANTIC_ON``;
    * ``ade20k_panoptic_seg``: SemSegEvaluator always, ``COCOPanopticEvaluator`` if
      ``PANOPTIC_ON``, :class:`InstanceSegEvaluator` if ``INSTANCE_ON``;
    * ``mapillary_vistas_panoptic_seg``: ``COCOPanopticEvaluator`` if ``PANOPTIC_ON``,
      InstanceSegEvaluator if ``INSTANCE_ON``, SemSegEvaluator if ``SEMANTIC_ON``;
    * ``cityscapes_sem_seg`` / ``cityscapes_instance``: ``CityscapesSemSegEvaluator`` /
      ``CityscapesInstanceEvaluator`` (cityscapesscripts), alone;
    * ``cityscapes_panoptic_seg``: ``COCOPanopticEvaluator`` if ``PANOPTIC_ON``,
      CityscapesSemSegEvaluator if ``SEMANTIC_ON``, CityscapesInstanceEvaluator if ``INSTANCE_ON``;
    * ``lvis``: ``LVISEvaluator``, alone.

    Returns one evaluator, or a ``DatasetEvaluators`` when several apply. Raises
    ``NotImplementedError`` when none does (Detectron2's ``DefaultTrainer.test`` then skips the
    dataset with a warning).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    test_cfg = cfg.MODEL.MASK_FORMER.TEST

    if evaluator_type == "cityscapes_instance":
        _check_single_machine(dataset_name)
        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type == "cityscapes_sem_seg":
        _check_single_machine(dataset_name)
        return CityscapesSemSegEvaluator(dataset_name)
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder)

    def semantic():
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    evaluators = []
    if evaluator_type in ("sem_seg", "ade20k_panoptic_seg"):
        evaluators.append(semantic())
    if evaluator_type == "coco":
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
    if evaluator_type in PANOPTIC_EVALUATOR_TYPES and test_cfg.PANOPTIC_ON:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type == "coco_panoptic_seg":
        if test_cfg.INSTANCE_ON:
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        if test_cfg.SEMANTIC_ON:
            evaluators.append(semantic())
    if evaluator_type == "mapillary_vistas_panoptic_seg":
        if test_cfg.INSTANCE_ON:
            evaluators.append(InstanceSegEvaluator(dataset_name, output_dir=output_folder))
        if test_cfg.SEMANTIC_ON:
            evaluators.append(semantic())
    if evaluator_type == "cityscapes_panoptic_seg":
        if test_cfg.SEMANTIC_ON or test_cfg.INSTANCE_ON:
            _check_single_machine(dataset_name)
        if test_cfg.SEMANTIC_ON:
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
        if test_cfg.INSTANCE_ON:
            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    if evaluator_type == "ade20k_panoptic_seg" and test_cfg.INSTANCE_ON:
        evaluators.append(InstanceSegEvaluator(dataset_name, output_dir=output_folder))

    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for the dataset '{dataset_name}' with evaluator_type={evaluator_type!r} "
            "(and the MODEL.MASK_FORMER.TEST.{SEMANTIC,INSTANCE,PANOPTIC}_ON settings given)."
        )
    if len(evaluators) == 1:
        return evaluators[0]
    return DatasetEvaluators(evaluators)
