"""What a new user runs into first with train_net.py (issue 10): too few classes for a dataset,
evaluating without a training set, a custom panoptic set without semantic PNGs."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: I001  isort: skip

import os

import pytest

from test_train_net import make_args, tiny_data  # noqa: F401  (tiny_data is a fixture)


@pytest.mark.parametrize("split_key", ["DATASETS.TRAIN", "DATASETS.TEST"])
@pytest.mark.parametrize("eval_only", [False, True])
def test_too_few_classes_for_a_dataset_stops_before_any_work(tiny_data, tmp_path, split_key, eval_only):
    # The tiny semantic set has 8 classes; with 7 the 8th label would silently become "no object".
    # Only one split holds the dataset, so each split's check is exercised on its own.
    other = "DATASETS.TEST" if split_key == "DATASETS.TRAIN" else "DATASETS.TRAIN"
    args = make_args(
        "semantic", tmp_path / "out", tiny_data,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7", other, "()",
        flags=["--eval-only"] if eval_only else [],
    )
    split = "training" if split_key == "DATASETS.TRAIN" else "test"
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is 7 but the {split} dataset 'tiny_sem_seg_\w+' has 8 stuff classes"):
        train_net.main(args)
    assert not os.path.exists(tmp_path / "out")


def test_eval_only_without_a_training_set_takes_the_metadata_from_the_test_set(tiny_data, tmp_path):
    # Random weights are enough: the point is that the model is built and evaluated at all.
    args = make_args("panoptic", tmp_path, tiny_data, "DATASETS.TRAIN", "()", flags=["--eval-only"])
    results = train_net.main(args)
    assert {"panoptic_seg", "sem_seg"} <= set(results)
    assert 0 <= results["panoptic_seg"]["PQ"] <= 100
