#!/usr/bin/env python
"""
Mask2Former video instance segmentation: training and evaluation on YouTube-VIS style datasets.

    python train_net_video.py --config-file configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net_video.py --config-file <config> --eval-only MODEL.WEIGHTS <checkpoint>

Same flags and behaviour as train_net.py (without GPUs, ``--num-gpus N`` starts N CPU processes
that synchronise over GLOO); only the data loaders and the evaluator are the video ones.
"""
import os

# See train_net.py: passive OpenMP waiting, set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The compatibility layer must be applied before anything imports detectron2.
import mask2former  # noqa: E402,F401  isort: skip
import mask2former_video  # noqa: E402  isort: skip

from mask2former.engine import Trainer as ImageTrainer  # noqa: E402
from mask2former.engine import setup as image_setup  # noqa: E402
from mask2former.engine.entry import launch_from_command_line, train_or_evaluate  # noqa: E402
from mask2former_video import (  # noqa: E402
    CocoClipDatasetMapper,
    YTVISDatasetMapper,
    YTVISEvaluator,
    add_maskformer2_video_config,
    build_detection_test_loader,
    build_detection_train_loader,
)


class Trainer(ImageTrainer):
    """The image Trainer (optimizer, schedule, checkpointing, CPU/GLOO support) with clip loaders
    and the YouTube-VIS evaluator."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return YTVISEvaluator(dataset_name, cfg, True, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        # COCO images can be trained on as pseudo-clips (upstream's convention: by dataset name).
        mapper_class = CocoClipDatasetMapper if cfg.DATASETS.TRAIN[0].startswith("coco") else YTVISDatasetMapper
        return build_detection_train_loader(cfg, mapper=mapper_class(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=YTVISDatasetMapper(cfg, is_train=False))

    @classmethod
    def test_with_TTA(cls, cfg, model):
        raise ValueError("TEST.AUG.ENABLED: test-time augmentation is not implemented for video models")


def setup(args):
    cfg = image_setup(args, add_configs=(add_maskformer2_video_config,))
    if cfg.TEST.AUG.ENABLED:
        raise ValueError("TEST.AUG.ENABLED: test-time augmentation is not implemented for video models")
    return cfg


def main(args):
    return train_or_evaluate(args, Trainer, setup)


def invoke_main():
    launch_from_command_line(main)


if __name__ == "__main__":
    invoke_main()
