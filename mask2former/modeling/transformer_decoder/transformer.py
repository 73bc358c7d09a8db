"""DETR's encoder-decoder transformer (used by MaskFormer's decoder and the transformer pixel decoder).

Tensors are sequence-first, (L, N, C), as `nn.MultiheadAttention` expects by default; parameter
names follow the official checkpoints.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Transformer", "TransformerEncoder", "TransformerDecoder"]


def activation_fn(name):
    """The activation function named by a transformer layer's `activation` argument."""
    activations = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}
    if name not in activations:
        raise ValueError(f"activation should be one of {sorted(activations)}, not {name!r}")
    return activations[name]


def with_pos_embed(tensor, pos):
    return tensor if pos is None else tensor + pos


def xavier_init_matrices(module):
    """Xavier-uniform initialisation of every weight matrix of `module` (biases and norms keep
    PyTorch's defaults), as the DETR-style transformers initialise themselves."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def residual_block(x, sublayer, norm, dropout, pre_norm):
    """One residual sub-layer of a transformer layer: ``x + dropout(sublayer(norm(x)))`` when the
    layer normalises its inputs (pre-norm), else ``norm(x + dropout(sublayer(x)))`` (post-norm)."""
    if pre_norm:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


def _clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", normalize_before=False
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before

    def _ffn(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, pos=None):
        def self_attention(x):
            # Positions are added to queries and keys only; values stay position-free.
            x_pos = with_pos_embed(x, pos)
            return self.self_attn(x_pos, x_pos, value=x, attn_mask=src_mask, key_padding_mask=src_key_padding_mask)[0]

        src = residual_block(src, self_attention, self.norm1, self.dropout1, self.normalize_before)
        return residual_block(src, self._ffn, self.norm2, self.dropout2, self.normalize_before)


class TransformerDecoderLayer(nn.Module):
    def __init__(
        self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", normalize_before=False
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before

    def _ffn(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(
        self,
        tgt,
        memory,
        tgt_mask=None,
        memory_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        pos=None,
        query_pos=None,
    ):
        def self_attention(x):
            x_pos = with_pos_embed(x, query_pos)
            return self.self_attn(x_pos, x_pos, value=x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]

        def cross_attention(x):
            return self.multihead_attn(
                query=with_pos_embed(x, query_pos),
                key=with_pos_embed(memory, pos),
                value=memory,
                attn_mask=memory_mask,
                key_padding_mask=memory_key_padding_mask,
            )[0]

        pre_norm = self.normalize_before
        tgt = residual_block(tgt, self_attention, self.norm1, self.dropout1, pre_norm)
        tgt = residual_block(tgt, cross_attention, self.norm2, self.dropout2, pre_norm)
        return residual_block(tgt, self._ffn, self.norm3, self.dropout3, pre_norm)


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer, num_layers, norm=None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, pos=None):
        for layer in self.layers:
            src = layer(src, src_mask=mask, src_key_padding_mask=src_key_padding_mask, pos=pos)
        return src if self.norm is None else self.norm(src)


def build_detr_encoder(d_model, nhead, num_layers, dim_feedforward, dropout, activation, normalize_before):
    """DETR's encoder: `num_layers` copies of one layer; the pre-norm variant ends with a LayerNorm."""
    encoder_layer = TransformerEncoderLayer(
        d_model, nhead, dim_feedforward, dropout, activation, normalize_before
    )
    encoder_norm = nn.LayerNorm(d_model) if normalize_before else None
    return TransformerEncoder(encoder_layer, num_layers, encoder_norm)


class TransformerDecoder(nn.Module):
    """Returns (num_layers, Q, N, C) normalized outputs of every layer when `return_intermediate`,
    else (1, Q, N, C) with the last one."""

    def __init__(self, decoder_layer, num_layers, norm=None, return_intermediate=False):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt,
        memory,
        tgt_mask=None,
        memory_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        pos=None,
        query_pos=None,
    ):
        def finish(x):
            return x if self.norm is None else self.norm(x)

        layer_outputs = []
        for layer in self.layers:
            tgt = layer(
                tgt,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                pos=pos,
                query_pos=query_pos,
            )
            if self.return_intermediate:
                layer_outputs.append(finish(tgt))
        # A leading layer axis either way: every layer's output, or only the last one's.
        return torch.stack(layer_outputs) if self.return_intermediate else finish(tgt)[None]


class Transformer(nn.Module):
    """DETR encoder-decoder over a single feature map, queried by learned query positions."""

    def __init__(
        self,
        d_model=512,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        activation="relu",
        normalize_before=False,
        return_intermediate_dec=False,
    ):
        super().__init__()
        self.encoder = build_detr_encoder(
            d_model, nhead, num_encoder_layers, dim_feedforward, dropout, activation, normalize_before
        )

        decoder_layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward, dropout, activation, normalize_before
        )
        self.decoder = TransformerDecoder(
            decoder_layer,
            num_decoder_layers,
            nn.LayerNorm(d_model),
            return_intermediate=return_intermediate_dec,
        )
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead

    def _reset_parameters(self):
        xavier_init_matrices(self)

    def forward(self, src, mask, query_embed, pos_embed):
        """
        Args:
            src: (N, C, H, W); mask: (N, H, W) bool (True = padding) or None;
            query_embed: (Q, C); pos_embed: (N, C, H, W).
        Returns:
            decoder outputs (L, N, Q, C) and the encoder memory (N, C, H, W).
        """
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        if mask is not None:
            mask = mask.flatten(1)
        tgt = torch.zeros_like(query_embed)
        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos_embed, query_pos=query_embed)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)
