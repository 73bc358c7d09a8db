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

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402

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
from mask2former.utils.checkpoint import Mask2FormerCheckpointer  # noqa: E402
from mask2former.utils.launch import launch  # noqa: E402


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        Mask2FormerCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
