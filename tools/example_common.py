"""What tools/run_example.py and tools/run_video_example.py share: the command line, the timed
training run (training time told apart from the final evaluation), the loss curve and the printed
metrics."""
import argparse
import json
import logging
import os
import time

# The compatibility layer must be applied before anything imports detectron2.
import mask2former  # noqa: F401  isort: skip

import torch  # noqa: E402

from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.engine.hooks import CallbackHook  # noqa: E402


def parse_args(argv, description, default_config, default_output_dir, default_num_vis, num_vis_help):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=default_config, help="training config")
    parser.add_argument("--output-dir", default=default_output_dir, help="where everything is written")
    parser.add_argument("--num-threads", type=int, default=2, help="CPU threads for PyTorch")
    parser.add_argument("--num-vis", type=int, default=default_num_vis, help=num_vis_help)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def prepare_run(args):
    """Thread count, logging format and the output directory, before any work."""
    torch.set_num_threads(args.num_threads)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    os.makedirs(args.output_dir, exist_ok=True)


def training_config(args, setup):
    """The config train_net.py / train_net_video.py would build from these example arguments."""
    train_args = default_argument_parser().parse_args(
        ["--config-file", args.config_file, "OUTPUT_DIR", args.output_dir, *args.opts]
    )
    return setup(train_args)


def train_timed(trainer_class, cfg):
    """Train from scratch; returns (model, results, training seconds, final evaluation seconds)."""
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=False)
    # The final evaluation runs inside train() (Detectron2's EvalHook, after the last iteration):
    # note when the last iteration ends to tell training time from evaluation time.
    last_step_end = {}

    def note_last_step(trainer_):
        if trainer_.iter == trainer_.max_iter - 1:
            last_step_end["time"] = time.perf_counter()

    trainer.register_hooks([CallbackHook(after_step=note_last_step)])
    start = time.perf_counter()
    results = trainer.train() or {}
    end = time.perf_counter()
    train_end = last_step_end.get("time", end)
    return trainer.model, results, train_end - start, end - train_end


def print_metrics(title, cfg, args, train_seconds, eval_seconds, metrics, name_width):
    print(f"\n{title}")
    print(f"training: {cfg.SOLVER.MAX_ITER} iterations in {train_seconds / 60:.1f} min "
          f"({args.num_threads} CPU threads); evaluation: {eval_seconds / 60:.1f} min")
    for name, value in metrics.items():
        if value is not None:
            print(f"  {name:>{name_width}}: {value:6.2f}")


def write_loss_curve(output_dir):
    """Plot the losses and learning rate Detectron2's JSONWriter logged in metrics.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if "total_loss" in row:
                rows.append(row)
    if not rows:
        raise RuntimeError(f"No losses in {output_dir}/metrics.json: did training run?")
    iterations = [row["iteration"] for row in rows]
    fig, (ax_total, ax_terms) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_total.plot(iterations, [row["total_loss"] for row in rows], label="total loss (all layers)")
    ax_total.set_yscale("log")
    ax_total.set_xlabel("iteration")
    ax_total.set_title("Training loss")
    ax_lr = ax_total.twinx()
    ax_lr.plot(iterations, [row.get("lr", float("nan")) for row in rows], color="gray", linestyle="--")
    ax_lr.set_ylabel("learning rate (dashed)")
    ax_total.legend(loc="upper right")
    for term in ("loss_ce", "loss_mask", "loss_dice"):
        if term in rows[0]:
            ax_terms.plot(iterations, [row[term] for row in rows], label=f"{term} (final layer)")
    ax_terms.set_yscale("log")
    ax_terms.set_xlabel("iteration")
    ax_terms.set_title("Loss terms of the last decoder layer")
    ax_terms.legend(loc="upper right")
    fig.tight_layout()
    path = os.path.join(output_dir, "loss_curve.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
