"""SeMask-Swin backbone (Jain et al., "SeMask: Semantically Masked Transformers", 2021).

A Swin Transformer whose every stage ends with a *semantic layer*: LayerNorm, then semantic
attention that predicts per-token class scores (the stage's semantic map, supervised by the
semantic-prior loss of `SeMaskMaskFormer`) and uses them to re-weight the features. The Swin parts
are those of `swin.py`; parameter names follow the published SeMask checkpoints
(``layers.<i>.semantic_layer.{norm1,class_injection.<j>.{gamma,mlp_cls_q,mlp_cls_k,mlp_v,mlp_res}}``,
registered between a stage's blocks and its downsampling, as in the checkpoints).

Behaviour the published models were trained with, kept on purpose:
* the semantic layer's output replaces the stage output *without* a residual to its input: it is
  ``norm1(x) + gamma * attention(norm1(x))``;
* windowed semantic attention zero-pads the normalised map to a multiple of the window, and the
  padded tokens take part in the attention;
* the original code makes the last stage's semantic attention global (over all tokens) exactly when
  there are 150 classes; ``last_stage_attention="auto"`` reproduces that.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY

from .swin import D2SwinTransformer, shifted_window_mask, window_partition, window_reverse

__all__ = ["SemanticAttention", "SemanticLayer", "D2SeMaskSwinTransformer", "last_stage_is_global"]

LAST_STAGE_ATTENTION_CHOICES = ("auto", "window", "global")


def last_stage_is_global(option, num_classes):
    """Resolves MODEL.SWIN.SEM_LAST_STAGE_ATTENTION ("auto": global iff 150 classes, as upstream)."""
    if option not in LAST_STAGE_ATTENTION_CHOICES:
        raise ValueError(f"MODEL.SWIN.SEM_LAST_STAGE_ATTENTION must be one of "
                         f"{LAST_STAGE_ATTENTION_CHOICES}, got {option!r}.")
    if option == "auto":
        return num_classes == 150
    return option == "global"


class SemanticAttention(nn.Module):
    """Attention whose affinities come from class scores: softmax(q_cls(x) k_cls(x)^T) v(x).

    Returns the class scores ``mlp_cls_q(x)`` (the semantic map) and ``x + gamma * mlp_res(...)``.
    """

    def __init__(self, dim, num_classes):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.1)
        for linear in (self.mlp_cls_q, self.mlp_cls_k, self.mlp_v):
            nn.init.kaiming_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        # Zero output projection and gamma: the layer starts as the identity on norm1(x).
        nn.init.zeros_(self.mlp_res.weight)
        nn.init.zeros_(self.mlp_res.bias)

    def forward(self, x):
        """x: (N, L, C) -> class scores (N, L, num_classes), features (N, L, C)."""
        class_scores = self.mlp_cls_q(x)
        affinity = (class_scores @ self.mlp_cls_k(x).transpose(-2, -1)).softmax(dim=-1)
        feats = self.proj_drop(self.mlp_res(affinity @ self.mlp_v(x)))
        return class_scores, self.gamma * feats + x


class SemanticLayer(nn.Module):
    """LayerNorm + ``num_blocks`` semantic attentions, in windows or over the whole map.

    Returns the last attention's class scores (B, H*W, num_classes) and features (B, H*W, C).
    """

    def __init__(self, dim, num_classes, num_blocks, window_size, norm_layer=nn.LayerNorm):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"SemanticLayer needs at least one block, got {num_blocks}.")
        self.num_classes = num_classes
        self.window_size = window_size  # None: global attention
        self.norm1 = norm_layer(dim)
        self.class_injection = nn.ModuleList(SemanticAttention(dim, num_classes) for _ in range(num_blocks))

    def _attend(self, x):
        for block in self.class_injection:
            class_scores, x = block(x)
        return class_scores, x

    def forward(self, x, H, W):
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"SemanticLayer got {L} tokens for a {H}x{W} feature map")
        x = self.norm1(x)
        if self.window_size is None:
            return self._attend(x)

        ws = self.window_size
        x = x.view(B, H, W, C)
        pad_r, pad_b = (-W) % ws, (-H) % ws
        if pad_r or pad_b:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        class_scores, x = self._attend(window_partition(x, ws))
        x = window_reverse(x, ws, H + pad_b, W + pad_r)[:, :H, :W]
        class_scores = window_reverse(class_scores, ws, H + pad_b, W + pad_r)[:, :H, :W]
        return class_scores.reshape(B, L, self.num_classes), x.reshape(B, L, C)

    def extra_repr(self):
        window = "global" if self.window_size is None else f"window={self.window_size}"
        return f"num_classes={self.num_classes}, {window}"


@BACKBONE_REGISTRY.register()
class D2SeMaskSwinTransformer(D2SwinTransformer):
    """SeMask-Swin with Detectron2's Backbone interface, configured from MODEL.SWIN.

    ``forward`` returns a pair of dicts keyed by OUT_FEATURES: the normalised stage features
    (B, C_i, H_i, W_i) and the stage semantic maps (B, num_classes, H_i, W_i) (class logits).
    """

    @configurable
    def __init__(self, *, num_classes, sem_window_size, num_sem_blocks, last_stage_global, **swin_kwargs):
        super().__init__(**swin_kwargs)
        self.num_classes = num_classes
        for i, layer in enumerate(self.layers):
            is_global = last_stage_global and i == self.num_layers - 1
            semantic_layer = SemanticLayer(
                self.num_features[i], num_classes, num_sem_blocks,
                window_size=None if is_global else sem_window_size,
            )
            # Re-register the downsampling after the semantic layer: the checkpoints list
            # blocks, semantic_layer, downsample, in that order.
            downsample = layer._modules.pop("downsample", None)
            layer.semantic_layer = semantic_layer
            layer.downsample = downsample

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg, input_shape)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        args.update(
            num_classes=num_classes,
            sem_window_size=cfg.MODEL.SWIN.SEM_WINDOW_SIZE,
            num_sem_blocks=cfg.MODEL.SWIN.NUM_SEM_BLOCKS,
            last_stage_global=last_stage_is_global(cfg.MODEL.SWIN.SEM_LAST_STAGE_ATTENTION, num_classes),
        )
        return args

    def _run_blocks(self, layer, x, H, W):
        shift_mask = None
        if layer.depth > 1:
            shift_mask = shifted_window_mask(H, W, layer.window_size, layer.shift_size, x.device).to(x.dtype)
        for block in layer.blocks:
            if layer.use_checkpoint and self.training:
                x = checkpoint.checkpoint(block, x, H, W, shift_mask, use_reentrant=False)
            else:
                x = block(x, H, W, shift_mask)
        return x

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"D2SeMaskSwinTransformer takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        # Plain ints, as in SwinTransformer.forward (consistent ONNX / TorchScript traces).
        H, W = int(x.shape[2]), int(x.shape[3])
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))

        features, semantic_maps = {}, {}
        for i, layer in enumerate(self.layers):
            x = self._run_blocks(layer, x, H, W)
            class_scores, x = layer.semantic_layer(x, H, W)
            name = f"res{i + 2}"
            if i in self.out_indices and name in self._out_features:
                out = getattr(self, f"norm{i}")(x)
                features[name] = out.view(-1, H, W, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
                semantic_maps[name] = (
                    class_scores.view(-1, H, W, self.num_classes).permute(0, 3, 1, 2).contiguous()
                )
            if layer.downsample is not None:
                x = layer.downsample(x, H, W)
                H, W = (H + 1) // 2, (W + 1) // 2
        return features, semantic_maps
