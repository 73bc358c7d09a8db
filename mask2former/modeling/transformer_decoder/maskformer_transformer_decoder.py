"""MaskFormer's transformer decoder and the registry of transformer decoders ("predictors")."""
import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry

from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for transformer decoders (the "predictor" of MaskFormerHead), which turn pixel-decoder
features into per-query class logits and mask logits.

The registered object is called with `(cfg, in_channels, mask_classification)`.
"""


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    """Build the transformer decoder named by `cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME`."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


def build_input_projection(in_channels, hidden_dim, enforce_input_project):
    """The 1x1 conv that brings a decoder's input features to `hidden_dim` channels; an identity
    where they already have that many and MASK_FORMER.ENFORCE_INPUT_PROJ is off."""
    if in_channels != hidden_dim or enforce_input_project:
        projection = Conv2d(in_channels, hidden_dim, kernel_size=1)
        weight_init.c2_xavier_fill(projection)
        return projection
    return nn.Sequential()


class MLP(nn.Module):
    """A stack of `num_layers` linear layers (input_dim -> hidden_dim ... -> output_dim) with a
    ReLU after each but the last; the layers are `layers.0`, `layers.1`, ... as in the checkpoints."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(w_in, w_out) for w_in, w_out in zip(widths, widths[1:]))

    def forward(self, x):
        *hidden, last = self.layers
        for layer in hidden:
            x = F.relu(layer(x))
        return last(x)


@TRANSFORMER_DECODER_REGISTRY.register()
class StandardTransformerDecoder(nn.Module):
    """MaskFormer's decoder: a DETR transformer over one feature map, whose query outputs give
    class logits and mask embeddings (masks = embeddings . per-pixel mask features)."""

    @configurable
    def __init__(
        self,
        in_channels,
        mask_classification=True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dropout: float,
        dim_feedforward: int,
        enc_layers: int,
        dec_layers: int,
        pre_norm: bool,
        deep_supervision: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        super().__init__()
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

        self.transformer = Transformer(
            d_model=hidden_dim,
            dropout=dropout,
            nhead=nheads,
            dim_feedforward=dim_feedforward,
            num_encoder_layers=enc_layers,
            num_decoder_layers=dec_layers,
            normalize_before=pre_norm,
            return_intermediate_dec=deep_supervision,
        )
        self.num_queries = num_queries
        self.query_embed = nn.Embedding(num_queries, hidden_dim)

        self.input_proj = build_input_projection(in_channels, hidden_dim, enforce_input_project)
        self.aux_loss = deep_supervision

        if self.mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dropout": mf.DROPOUT,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "enc_layers": mf.ENC_LAYERS,
            "dec_layers": mf.DEC_LAYERS,
            "pre_norm": mf.PRE_NORM,
            "deep_supervision": mf.DEEP_SUPERVISION,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        }

    def forward(self, x, mask_features, mask=None):
        if mask is not None:
            mask = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
        pos = self.pe_layer(x, mask)
        hs, _ = self.transformer(self.input_proj(x), mask, self.query_embed.weight, pos)

        out = {}
        if self.mask_classification:
            outputs_class = self.class_embed(hs)
            out["pred_logits"] = outputs_class[-1]
        if self.aux_loss:
            mask_embed = self.mask_embed(hs)  # (L, N, Q, C)
            outputs_seg_masks = torch.einsum("lbqc,bchw->lbqhw", mask_embed, mask_features)
            out["pred_masks"] = outputs_seg_masks[-1]
            out["aux_outputs"] = self._set_aux_loss(
                outputs_class if self.mask_classification else None, outputs_seg_masks
            )
        else:
            mask_embed = self.mask_embed(hs[-1])
            out["pred_masks"] = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        return out

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class, outputs_seg_masks):
        if self.mask_classification:
            return [
                {"pred_logits": a, "pred_masks": b}
                for a, b in zip(outputs_class[:-1], outputs_seg_masks[:-1])
            ]
        return [{"pred_masks": b} for b in outputs_seg_masks[:-1]]
