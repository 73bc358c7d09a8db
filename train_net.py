#!/usr/bin/env python
"""
Mask2Former training and evaluation script, on Detectron2's DefaultTrainer.

    python train_net.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file <config> --eval-only MODEL.WEIGHTS <checkpoint>

Without GPUs, ``--num-gpus N`` starts N CPU processes that synchronise over GLOO.
"""
import os

# OpenMP threads that busy-wait between operations make CPU training many times slower as soon as
# another process wants the same cores; waiting passively costs little on an idle machine. Read
# when torch loads OpenMP, so it is set before any import of torch (set it yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The compatibility layer must be applied before anything imports detectron2.
import mask2former  # noqa: E402,F401  isort: skip

# Re-exported: scripts and tests written against upstream's train_net.py import these from here.
from mask2former.engine import (  # noqa: E402,F401
    Trainer,
    build_optimizer,
    check_inputs,
    load_config,
    replace_sync_batch_norm,
    setup,
    use_cpu_without_cuda,
)
from mask2former.engine.entry import launch_from_command_line, train_or_evaluate  # noqa: E402


def main(args):
    return train_or_evaluate(args, Trainer, setup)


def invoke_main():
    # `main` is looked up when called: tests/two_machine_main.py replaces it.
    launch_from_command_line(main)


if __name__ == "__main__":
    invoke_main()
