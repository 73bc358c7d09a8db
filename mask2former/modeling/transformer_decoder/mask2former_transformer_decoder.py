"""Mask2Former's masked-attention transformer decoder.

Each layer lets the queries cross-attend to one level of the multi-scale pixel-decoder features
(round-robin from low to high resolution), restricted to the foreground of the mask each query
predicted at the previous layer; then self-attention among queries, then an FFN. Class and mask
predictions are made from the learnable queries and after every layer (deep supervision).

Tensors inside the decoder are sequence-first, (L, N, C), as in the official implementation.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

from .mask_logits import mask_logits, mask_product
from .maskformer_transformer_decoder import (
    MLP,
    TRANSFORMER_DECODER_REGISTRY,
    build_input_projection,
)
from .position_encoding import PositionEmbeddingSine
from .transformer import with_pos_embed, xavier_init_matrices

__all__ = [
    "SelfAttentionLayer",
    "CrossAttentionLayer",
    "FFNLayer",
    "MultiScaleMaskedTransformerDecoder",
]


def _resize_planes(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of every (H, W) plane of x (N, ..., H, W) to `size`.

    On the CPU the planes are resized as a batch of one-channel images: torch's kernel for an
    image with many channels (the 100 queries' masks) runs 3-20x slower (measured 7.2 -> 2.3 ms
    to 64x64 and 5.8 -> 0.26 ms to 16x16 for 2 x 100 masks of 128x128, 2 threads). The two
    kernels round the same bilinear weights in a different order: values may differ in the last
    bit, and an attention mask only where a resized logit is that close to 0.
    """
    planes = x.reshape(-1, 1, *x.shape[-2:]) if x.device.type == "cpu" else x.flatten(1, -3)
    resized = F.interpolate(planes, size=size, mode="bilinear", align_corners=False)
    return resized.view(x.shape[:-2] + resized.shape[-2:])


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        xavier_init_matrices(self)

    def forward(self, tgt, tgt_mask=None, tgt_key_padding_mask=None, query_pos=None):
        if self.normalize_before:
            tgt2 = self.norm(tgt)
            q = k = with_pos_embed(tgt2, query_pos)
            tgt2 = self.self_attn(
                q, k, value=tgt2, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask
            )[0]
            return tgt + self.dropout(tgt2)
        q = k = with_pos_embed(tgt, query_pos)
        tgt2 = self.self_attn(q, k, value=tgt, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
        return self.norm(tgt + self.dropout(tgt2))


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        xavier_init_matrices(self)

    def forward(self, tgt, memory, memory_mask=None, memory_key_padding_mask=None, pos=None, query_pos=None):
        """`memory_mask`: (N * nhead, Q, S) bool, True where a query may not attend."""
        query = self.norm(tgt) if self.normalize_before else tgt
        tgt2 = self.multihead_attn(
            query=with_pos_embed(query, query_pos),
            key=with_pos_embed(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
        )[0]
        tgt = tgt + self.dropout(tgt2)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    def __init__(self, d_model, dim_feedforward=2048, dropout=0.0, normalize_before=False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        xavier_init_matrices(self)

    def forward(self, tgt):
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    _version = 2

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Checkpoints written before version 2 call the learnable query features "static_query".
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            renamed = False
            for k in list(state_dict.keys()):
                if k.startswith(prefix) and "static_query" in k:
                    state_dict[k.replace("static_query", "query_feat")] = state_dict.pop(k)
                    renamed = True
            if renamed:
                logging.getLogger(__name__).warning(
                    f"Weight format of {self.__class__.__name__} has changed: renamed 'static_query' "
                    "to 'query_feat'. Please upgrade your checkpoint."
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

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
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features.
            mask_classification: must be True (class logits are always predicted).
            dec_layers: number of masked-attention layers (the config's DEC_LAYERS minus one,
                which counts the prediction made from the learnable queries).
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask classification")
        self.mask_classification = mask_classification

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList()
        self.transformer_cross_attention_layers = nn.ModuleList()
        self.transformer_ffn_layers = nn.ModuleList()
        # The masked-attention decoder never uses dropout, whatever MASK_FORMER.DROPOUT says.
        for _ in range(self.num_layers):
            self.transformer_self_attention_layers.append(
                SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            )
            self.transformer_cross_attention_layers.append(
                CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            )
            self.transformer_ffn_layers.append(
                FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm)
            )

        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)

        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            build_input_projection(in_channels, hidden_dim, enforce_input_project)
            for _ in range(self.num_feature_levels)
        )

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # One "layer" of DEC_LAYERS is the prediction from the learnable queries.
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        }

    def forward(self, x, mask_features, mask=None):
        """
        Args:
            x: list of 3 feature maps (N, C, H_l, W_l), low to high resolution.
            mask_features: (N, mask_dim, H, W) per-pixel embeddings.
            mask: unused (kept for the predictor interface shared with MaskFormer).
        Returns:
            dict with "pred_logits" (N, Q, K+1), "pred_masks" (N, Q, H, W) and "aux_outputs": in
            training, the same for every earlier prediction (from the learnable queries, then
            after each layer but the last), which the losses supervise; in eval mode an empty
            list, since inference uses the last prediction only (the earlier ones are then
            computed at the attended level's resolution, see :meth:`decode`).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"MultiScaleMaskedTransformerDecoder takes {self.num_feature_levels} feature levels, "
                f"got {len(x)}"
            )
        src = []
        pos = []
        size_list = []
        for i in range(self.num_feature_levels):
            size_list.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i], None).flatten(2).permute(2, 0, 1))
            src.append(
                (self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]).permute(
                    2, 0, 1
                )
            )
        return self.decode(src, pos, size_list, mask_features, keep_aux=self.training)

    def decode(self, src, pos, size_list, mask_features, keep_aux=True):
        """The query initialisation and the masked-attention layers.

        Args:
            src, pos: per level, the memory and its position encoding, (S_l, N, C) each.
            size_list: per level, the (h, w) the attention mask of that level is resized to.
            mask_features: per-pixel embeddings, (N, mask_dim, H, W), or with any dimensions
                between mask_dim and H, W that :meth:`mask_logits` understands.
            keep_aux: return the earlier predictions as "aux_outputs"; else an empty list, and
                the earlier predictions are made at the attention masks' resolution only
                (:meth:`_decode_final_prediction`).
        """
        bs = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)

        if not keep_aux:
            return self._decode_final_prediction(output, query_embed, src, pos, size_list, mask_features)

        predictions_class = []
        predictions_mask = []
        outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
            output, mask_features, attn_mask_target_size=size_list[0]
        )
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)

        for i in range(self.num_layers):
            output = self._decoder_layer(i, output, src, pos, attn_mask, query_embed)
            is_last = i == self.num_layers - 1
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
                output,
                mask_features,
                # The last prediction guides no further layer: skip its attention mask.
                attn_mask_target_size=None if is_last else size_list[(i + 1) % self.num_feature_levels],
            )
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)

        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": self._set_aux_loss(predictions_class, predictions_mask),
        }

    def _decoder_layer(self, i, output, src, pos, attn_mask, query_embed):
        level_index = i % self.num_feature_levels
        output = self.transformer_cross_attention_layers[i](
            output,
            src[level_index],
            memory_mask=attn_mask,
            memory_key_padding_mask=None,
            pos=pos[level_index],
            query_pos=query_embed,
        )
        output = self.transformer_self_attention_layers[i](
            output, tgt_mask=None, tgt_key_padding_mask=None, query_pos=query_embed
        )
        return self.transformer_ffn_layers[i](output)

    def _decode_final_prediction(self, output, query_embed, src, pos, size_list, mask_features):
        """The masked-attention layers when only the last prediction is wanted (inference).

        The earlier predictions then serve only as the next layer's attention mask, at that
        level's resolution. Bilinear resizing and the mask product are both linear maps, so they
        commute: the pixel embeddings are resized once per level and those masks are predicted at
        the level's size directly (a few percent of the full-resolution product). Same values in
        exact arithmetic; in float32 a mask logit within rounding noise of 0 may fall on the
        other side of the threshold, as in any reordering of the computation.
        """
        mask_dims = mask_features.shape[1:-2]
        level_features = [
            F.interpolate(mask_features.flatten(1, -3), size=size, mode="bilinear", align_corners=False).unflatten(
                1, mask_dims
            )
            for size in size_list
        ]
        for i in range(self.num_layers):
            level = level_features[i % self.num_feature_levels]
            attn_mask = self._attention_mask(self.mask_logits(self._mask_embedding(output), level))
            output = self._decoder_layer(i, output, src, pos, attn_mask, query_embed)
        outputs_class, outputs_mask, _ = self.forward_prediction_heads(output, mask_features, None)
        return {"pred_logits": outputs_class, "pred_masks": outputs_mask, "aux_outputs": []}

    def _mask_embedding(self, output):
        """Mask embeddings (N, Q, mask_dim) of the query features (Q, N, C)."""
        return self.mask_embed(self.decoder_norm(output).transpose(0, 1))

    def mask_logits(self, mask_embed, mask_features):
        """Mask logits (N, Q, H, W) from query embeddings (N, Q, C) and pixel embeddings (N, C, H, W)."""
        if self.training and torch.is_grad_enabled():
            # Same values; the backward skips the queries without a gradient (unmatched ones).
            return mask_logits(mask_embed, mask_features)
        return mask_product(mask_embed, mask_features)

    def forward_prediction_heads(self, output, mask_features, attn_mask_target_size):
        """
        Class logits (N, Q, K+1) and mask logits (N, Q, H, W) from the query features (Q, N, C),
        and the cross-attention mask for the next layer at `attn_mask_target_size` (None: skip).

        The attention mask is True (= may not attend) where the predicted mask, resized to the
        next level, is below 0.5 after a sigmoid; a query whose mask is empty at that level may
        attend everywhere instead (otherwise its attention would be undefined).
        """
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = self.mask_logits(mask_embed, mask_features)

        attn_mask = None
        if attn_mask_target_size is not None:
            # Masks (N, Q, ..., H, W) with any dimensions between Q and H, W (the video decoder's
            # frames): all of them are resized independently.
            attn_mask = self._attention_mask(_resize_planes(outputs_mask.detach(), attn_mask_target_size))
        return outputs_class, outputs_mask, attn_mask

    @torch.no_grad()
    def _attention_mask(self, mask_logits):
        """Cross-attention mask (N * nheads, Q, ...*h*w) from mask logits (N, Q, ..., h, w) at the
        attended level's size, flattened into the memory's order."""
        attn_mask = mask_logits.flatten(2).sigmoid() < 0.5
        # Out of place: exporters (ONNX) have no in-place boolean "and"; same values.
        attn_mask = attn_mask & ~attn_mask.all(dim=-1, keepdim=True)
        # One copy per head, batch-major, as nn.MultiheadAttention expects.
        return attn_mask.repeat_interleave(self.num_heads, dim=0)

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class, outputs_seg_masks):
        return [
            {"pred_logits": a, "pred_masks": b}
            for a, b in zip(outputs_class[:-1], outputs_seg_masks[:-1])
        ]
