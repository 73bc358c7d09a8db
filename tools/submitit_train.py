#!/usr/bin/env python
"""Run train_net.py as a SLURM job through submitit.

One SLURM task per node; each task starts ``--num-gpus`` workers with train_net's launcher, and the
multi-machine flags come from the job itself: ``--num-machines`` is the number of nodes,
``--machine-rank`` the task's node, ``--dist-url`` the first node of the allocation at ``--port``.
A job that SLURM pre-empts or that reaches its time limit is requeued and resumes from the last
checkpoint in OUTPUT_DIR (``--resume``). Example (2 nodes of 8 GPUs, 3 days):

    python tools/submitit_train.py --nodes 2 --num-gpus 8 --partition PARTITION --timeout-min 4320 \\
        --job-dir output/jobs/%j \\
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml OUTPUT_DIR output/r50
"""
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_net  # noqa: E402  (applies the Detectron2 compatibility layer first)
from detectron2.engine import default_argument_parser  # noqa: E402


def get_parser():
    parser = default_argument_parser()
    parser.description = __doc__
    group = parser.add_argument_group("SLURM (submitit)")
    group.add_argument("--nodes", type=int, default=1, help="machines; one task each")
    group.add_argument("--partition", default="", help="SLURM partition")
    group.add_argument("--timeout-min", type=int, default=60 * 72, help="time limit of one job, minutes")
    group.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per node")
    group.add_argument("--mem-gb", type=int, default=0, help="memory per node (0: SLURM's default)")
    group.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node")
    group.add_argument("--job-dir", default="output/jobs/%j", help="submitit's logs and pickles (%%j: the job id)")
    return parser


def distributed_flags(job_env, port):
    """train_net's (num_machines, machine_rank, dist_url) for a job of one task per node."""
    if job_env.num_tasks != job_env.num_nodes:
        raise ValueError(
            f"one SLURM task per node is expected (each starts the node's workers); the job has "
            f"{job_env.num_tasks} tasks on {job_env.num_nodes} nodes"
        )
    return job_env.num_nodes, job_env.node, f"tcp://{job_env.hostnames[0]}:{port}"


class TrainingJob:
    """The callable submitit runs on every node; checkpoint() is its requeue hook."""

    def __init__(self, args):
        self.args = args

    def __call__(self):
        import submitit

        args = copy.copy(self.args)
        args.num_machines, args.machine_rank, args.dist_url = distributed_flags(submitit.JobEnvironment(), args.port)
        train_net.launch(
            train_net.main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )

    def checkpoint(self):
        import submitit

        args = copy.copy(self.args)
        args.resume = True
        return submitit.helpers.DelayedSubmission(TrainingJob(args))


def main(argv=None):
    import submitit

    args = get_parser().parse_args(argv)
    executor = submitit.AutoExecutor(folder=args.job_dir, slurm_max_num_timeout=30)
    parameters = {
        "nodes": args.nodes,
        "tasks_per_node": 1,
        "gpus_per_node": args.num_gpus,
        "cpus_per_task": args.cpus_per_task,
        "timeout_min": args.timeout_min,
        "name": "mask2former",
    }
    if args.partition:
        parameters["slurm_partition"] = args.partition
    if args.mem_gb:
        parameters["mem_gb"] = args.mem_gb
    executor.update_parameters(**parameters)
    job = executor.submit(TrainingJob(args))
    print(f"submitted job {job.job_id}; logs in {args.job_dir.replace('%j', str(job.job_id))}")
    return job


if __name__ == "__main__":
    main()
