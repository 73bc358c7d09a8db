"""Shared by the `convert-*-to-d2.py` tools: read a PyTorch checkpoint, write a Detectron2 .pkl."""
import os
import pickle
import sys

import torch

__all__ = ["load_state_dict", "save_d2_checkpoint", "run"]


TRUST_FLAG = "--trust-file"


def load_state_dict(path, trusted=False):
    """The state dict in a checkpoint file: the file itself, or its "model" / "state_dict" entry.

    Only tensors and plain containers are unpickled unless ``trusted``: full unpickling runs any
    code the file names.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trusted:
            raise pickle.UnpicklingError(
                f"{path} holds more than tensors (some training checkpoints also pickle their "
                f"options), and unpickling it could run code. If you trust the file, rerun with "
                f"{TRUST_FLAG}.\nPyTorch says: {e}"
            ) from None
        print(f"{path} holds more than tensors; loading it with full unpickling ({TRUST_FLAG}).", file=sys.stderr)
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
    trusted = TRUST_FLAG in argv[1:]
    argv = [a for a in argv if a != TRUST_FLAG]
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(
            f"{description}\nusage: python {os.path.basename(argv[0])} input.pth output.pkl [{TRUST_FLAG}]",
            file=sys.stderr,
        )
        return 2
    state_dict = convert(load_state_dict(argv[1], trusted))
    save_d2_checkpoint(state_dict, argv[2], author)
    print(f"Wrote {len(state_dict)} tensors to {argv[2]}")
    return 0
