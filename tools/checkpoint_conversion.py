"""Shared by the `convert-*-to-d2.py` tools: read a PyTorch checkpoint, write a Detectron2 .pkl."""
import os
import pickle
import sys

import torch

__all__ = ["load_state_dict", "save_d2_checkpoint", "run"]


def load_state_dict(path):
    """The state dict in a checkpoint file: the file itself, or its "model" / "state_dict" entry."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Some training checkpoints also pickle their argparse options; only do this for files
        # you trust.
        print(f"{path} holds more than tensors; loading it with full unpickling.", file=sys.stderr)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or a checkpoint), got {type(obj).__name__}")
    for entry in ("model", "state_dict"):
        if isinstance(obj.get(entry), dict):
            obj = obj[entry]
            break
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not obj or not_tensors:
        raise ValueError(
            f"{path}: not a state dict ({len(obj)} entries; non-tensor entries: {not_tensors[:5]})"
        )
    return obj


def save_d2_checkpoint(state_dict, path, author):
    """Writes {"model": ..., "__author__": author, "matching_heuristics": True}: Detectron2's
    checkpointer then matches names by suffix (e.g. "patch_embed.*" -> "backbone.patch_embed.*")."""
    with open(path, "wb") as f:
        pickle.dump({"model": state_dict, "__author__": author, "matching_heuristics": True}, f)


def run(argv, convert, author, description):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(f"{description}\nusage: python {os.path.basename(argv[0])} input.pth output.pkl", file=sys.stderr)
        return 2
    state_dict = convert(load_state_dict(argv[1]))
    save_d2_checkpoint(state_dict, argv[2], author)
    print(f"Wrote {len(state_dict)} tensors to {argv[2]}")
    return 0
