"""COCO instance AP through pycocotools, usable with or without Detectron2's compiled ops."""
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator

from ..utils.detectron2_compat import MissingCompiledOpError, has_compiled_ops

__all__ = ["COCOEvaluator"]


class COCOEvaluator(_D2COCOEvaluator):
    """Detectron2's :class:`~detectron2.evaluation.COCOEvaluator` whose ``use_fast_impl`` follows
    the installed Detectron2.

    Detectron2's fast COCOeval (``COCOeval_opt``) lives in its compiled extension; without it the
    evaluation would only fail after the whole dataset has been run through the model. Leaving
    ``use_fast_impl`` unset picks the fast implementation when it exists (Detectron2's default)
    and the official pycocotools COCOeval otherwise; asking for it explicitly on a Python-only
    Detectron2 fails at once.

    A dataset registered with ``json_file=None`` (a panoptic dataset without instance annotations,
    such as Mapillary Vistas) is refused with a clear error instead of failing inside PathManager.
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        use_fast_impl=None,
        **kwargs,
    ):
        if MetadataCatalog.get(dataset_name).get("json_file", "") is None:
            raise ValueError(
                f"Instance AP needs COCO instance annotations, but '{dataset_name}' was registered "
                "with json_file=None. Register the dataset with the path of an instances json, or "
                "set MODEL.MASK_FORMER.TEST.INSTANCE_ON False."
            )
        if use_fast_impl is None:
            use_fast_impl = has_compiled_ops()
        elif use_fast_impl and not has_compiled_ops():
            raise MissingCompiledOpError(
                f"COCOEvaluator('{dataset_name}', use_fast_impl=True) needs Detectron2's compiled "
                "COCOeval_opt, which this Detectron2 install lacks; leave use_fast_impl unset (or "
                "False) to use pycocotools' official COCOeval."
            )
        super().__init__(
            dataset_name, tasks, distributed, output_dir, use_fast_impl=use_fast_impl, **kwargs
        )
