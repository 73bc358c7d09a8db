"""`python tests/two_machine_main.py <train_net.py arguments>`: train_net.py's command line, whose
workers also save their final weights as OUTPUT_DIR/weights_rank<R>.pth (Detectron2 checkpoints only
rank 0), so tests/test_two_machines.py can check that two "machines" trained in lockstep."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_net  # noqa: E402  (applies the Detectron2 compatibility layer first)
import torch  # noqa: E402


def main_saving_weights(args):
    import detectron2.utils.comm as comm

    train = train_net.Trainer.train

    def train_then_save(trainer):
        results = train(trainer)
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        torch.save(model.state_dict(), os.path.join(trainer.cfg.OUTPUT_DIR, f"weights_rank{comm.get_rank()}.pth"))
        return results

    train_net.Trainer.train = train_then_save
    return train_net.main(args)


if __name__ == "__main__":
    # invoke_main() launches the module-level `main`; spawned workers find this function by name.
    train_net.main = main_saving_weights
    train_net.invoke_main()
