"""The command-line entry shared by train_net.py and train_net_video.py: both scripts differ only in
the Trainer class and the setup function they pass here."""
import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results

from ..utils.checkpoint import Mask2FormerCheckpointer
from ..utils.launch import launch


def train_or_evaluate(args, trainer_class, setup):
    """Train (resuming from OUTPUT_DIR with ``--resume``) or, with ``--eval-only``, load
    MODEL.WEIGHTS and evaluate; returns the trainer's or the evaluation's results."""
    cfg = setup(args)

    if args.eval_only:
        model = trainer_class.build_model(cfg)
        Mask2FormerCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = trainer_class.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(trainer_class.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_from_command_line(main):
    """Parse Detectron2's standard flags and run ``main(args)`` in ``--num-gpus`` processes (CPU
    processes over GLOO without GPUs). ``main`` must be a module-level function so that spawned
    workers can find it by name."""
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
