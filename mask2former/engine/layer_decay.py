"""Layer-wise learning-rate decay for ViT backbones (BEiT's fine-tuning recipe, used by ViT-Adapter).

The ViT blocks closest to the input keep most of their pre-trained weights: block i (0-based) of a
NUM_LAYERS-block ViT learns at RATE ** (NUM_LAYERS - i) times the base rate, the patch embedding (and a
class token or absolute position table, if any) at RATE ** (NUM_LAYERS + 1), and every other
parameter (the adapter, the pixel decoder, the transformer decoder) at the base rate. Parameters with
one dimension (norms, layer scales, q/v biases) and biases are not weight-decayed.
"""
import re

_EMBEDDING = re.compile(r"^backbone\.(patch_embed\.|cls_token$|mask_token$|pos_embed$)")
_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.")


def layer_id(name, num_layers):
    """0 for the patch embedding, i + 1 for ViT block i, num_layers + 1 for the rest."""
    if _EMBEDDING.match(name):
        return 0
    block = _BLOCK.match(name)
    if block:
        return int(block.group(1)) + 1
    return num_layers + 1


def layer_decay_hyperparams(cfg, name, parameter):
    """{"lr", "weight_decay"} of the model parameter `name` under SOLVER.LAYER_DECAY."""
    num_layers = cfg.SOLVER.LAYER_DECAY.NUM_LAYERS
    scale = cfg.SOLVER.LAYER_DECAY.RATE ** (num_layers + 1 - layer_id(name, num_layers))
    decays = parameter.ndim > 1 and not name.endswith(".bias")
    return {"lr": cfg.SOLVER.BASE_LR * scale, "weight_decay": cfg.SOLVER.WEIGHT_DECAY if decays else 0.0}
