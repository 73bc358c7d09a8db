"""
ADE20K's instance label PNGs (ADEChallengeData2016/annotations_instance/<split>/<image id>.png):
R = instance class (1-100, the `instance_id` of `ade20k_instance_categories`), G = instance index
within the image (0 = no instance). Read by datasets/prepare_ade20k_{ins,pan}_seg.py.
"""
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .categories import ade20k_instance_categories

__all__ = ["instance_to_semantic_class", "read_ade20k_instances"]


def instance_to_semantic_class() -> Dict[int, int]:
    """Instance class (R channel of annotations_instance, 1-100) -> ADE20K-150 class index."""
    return {c["instance_id"]: c["ade20k_150_id"] for c in ade20k_instance_categories()}


def read_ade20k_instances(
    instance_png: str, semantic_class_of: Dict[int, int]
) -> List[Tuple[np.ndarray, int]]:
    """
    The instances of one image as (H x W bool mask, ADE20K-150 class index), in ascending
    instance index. `semantic_class_of` is :func:`instance_to_semantic_class`.
    """
    if not os.path.isfile(instance_png):
        raise FileNotFoundError(
            f"{instance_png} does not exist "
            f"(see the section 'ADE20K' of datasets/README.md)"
        )
    labels = np.asarray(Image.open(instance_png))
    if labels.dtype != np.uint8 or labels.ndim != 3:
        raise ValueError(
            f"{instance_png}: expected an 8-bit RGB instance label, "
            f"found {labels.dtype} {labels.shape}"
        )
    instance_classes, instance_indices = labels[..., 0], labels[..., 1]
    instances = []
    for instance_index in np.unique(instance_indices):
        if instance_index == 0:  # 0 marks pixels without an instance
            continue
        mask = instance_indices == instance_index
        classes = np.unique(instance_classes[mask])
        if len(classes) != 1 or int(classes[0]) not in semantic_class_of:
            raise ValueError(
                f"{instance_png}: instance {instance_index} has class value(s) {classes.tolist()} "
                f"in the R channel; expected exactly one instance class in 1-100"
            )
        instances.append((mask, semantic_class_of[int(classes[0])]))
    return instances
