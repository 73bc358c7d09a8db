"""Instance AP on panoptic datasets (ADE20K, Mapillary Vistas): thing ids are not 0..K-1 there."""
from detectron2.data.catalog import Metadata

from .coco_evaluation import COCOEvaluator

__all__ = ["InstanceSegEvaluator"]


class InstanceSegEvaluator(COCOEvaluator):
    """COCO-style instance AP for datasets whose contiguous ids cover things AND stuff.

    On a panoptic dataset ``thing_dataset_id_to_contiguous_id`` maps the thing categories to a
    subset of ``[0, #things + #stuff)``, which Detectron2's COCOEvaluator rejects (it requires the
    thing ids to be exactly ``0..K-1``). Here the predicted contiguous ids are mapped back to
    dataset ids through that dictionary before COCO evaluation. Predictions of non-thing classes
    (a model asked for instances without panoptic filtering also returns stuff "instances") cannot
    match any instance annotation, so they are dropped; the number dropped is logged.
    """

    _CONTIGUOUS_ID_KEY = "thing_dataset_id_to_contiguous_id"

    def _eval_predictions(self, predictions, img_ids=None):
        metadata = self._metadata
        dataset_id_to_contiguous_id = metadata.get(self._CONTIGUOUS_ID_KEY)
        if dataset_id_to_contiguous_id is None:
            super()._eval_predictions(predictions, img_ids)
            return

        contiguous_id_to_dataset_id = {v: k for k, v in dataset_id_to_contiguous_id.items()}
        dropped = 0
        for prediction in predictions:
            kept = []
            for instance in prediction["instances"]:
                dataset_id = contiguous_id_to_dataset_id.get(instance["category_id"])
                if dataset_id is None:
                    dropped += 1
                    continue
                kept.append(dict(instance, category_id=dataset_id))
            prediction["instances"] = kept
        if dropped:
            self._logger.warning(
                f"InstanceSegEvaluator: dropped {dropped} predicted instances of non-thing classes "
                f"of '{metadata.name}'."
            )

        # The ids are dataset ids now: hide the mapping so the parent does not map them again.
        self._metadata = Metadata(
            **{k: v for k, v in metadata.as_dict().items() if k != self._CONTIGUOUS_ID_KEY}
        )
        try:
            super()._eval_predictions(predictions, img_ids)
        finally:
            self._metadata = metadata
