"""Swin Transformer backbone (Liu et al., 2021) as a Detectron2 backbone.

Parameter and buffer names follow the official Swin / Mask2Former checkpoints so that published
weights load key for key. Behaviour that the checkpoints were trained with is kept on purpose:
feature maps are zero-padded to a multiple of the window size *after* the first LayerNorm, and the
padded tokens take part in window attention (only the shifted-window regions are masked).

On the CPU the blocks are arranged for speed at the same results (to float32 rounding): the
token-wise projections run on the tokens rather than on the padded windows (the padding is one
zero token per image), the zero padding, cyclic shift and window partition of a block are one row
gather (and its inverse one more), the attention runs in PyTorch's fused kernel with the
relative position bias and the shift mask added up once per input size, and the large linear
layers go through oneDNN (`OneDNNLinear`). The unfused attention remains where gradients flow
into the bias table (the fused CPU kernel has no gradient for an additive mask) and while the
model is being exported.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import DropPath, trunc_normal_

from ..onednn_linear import OneDNNLinear
from ...utils.misc import is_exporting

__all__ = ["SwinTransformer", "D2SwinTransformer"]

# Additive bias that removes attention between tokens of different shifted-window regions.
_SHIFT_MASK_VALUE = -100.0


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, drop=0.0):
        super().__init__()
        self.fc1 = OneDNNLinear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = OneDNNLinear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x, window_size):
    """(B, H, W, C) with H, W multiples of window_size -> (B * num_windows, window_size**2, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_reverse(windows, window_size, H, W):
    """Inverse of `window_partition`: (B * num_windows, window_size**2, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window_size):
    """(Wh*Ww, Wh*Ww) index into the relative position bias table for every (query, key) pair."""
    Wh, Ww = window_size
    coords = torch.stack(
        torch.meshgrid(torch.arange(Wh), torch.arange(Ww), indexing="ij")
    ).flatten(1)  # (2, Wh*Ww)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    # Shift to non-negative offsets, then flatten (dy, dx) row-major over a (2Wh-1, 2Ww-1) grid.
    return (relative[..., 0] + Wh - 1) * (2 * Ww - 1) + (relative[..., 1] + Ww - 1)


def _cache_lookup(cache, key, compute, inputs=()):
    """``compute()``, remembered in the one-entry ``cache`` (a list) under ``key``; recomputed
    while the model is being exported, so that a recorded graph derives it from its inputs.
    Tensors whose identity is part of the key (`_identity`) are passed as ``inputs``: the entry
    holds them, so that no other tensor can take their storage while it is kept."""
    if is_exporting():
        return compute()
    if not cache or cache[0] != key:
        cache[:] = [key, compute(), inputs]
    return cache[1]


def _identity(tensor):
    """Storage and version of a tensor: equal as long as its values have not been replaced or
    written in place (tensors made under torch.inference_mode carry no version; they are only
    told apart by storage)."""
    return tensor.data_ptr(), None if tensor.is_inference() else tensor._version


class WindowAttention(nn.Module):
    """Multi-head self-attention inside local windows, with a learned relative position bias."""

    def __init__(
        self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0
    ):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5

        Wh, Ww = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * Wh - 1) * (2 * Ww - 1), num_heads)
        )
        # Persistent: it is part of the official checkpoints.
        self.register_buffer("relative_position_index", relative_position_index(window_size))

        self.qkv = OneDNNLinear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = OneDNNLinear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._bias_cache = []

    def relative_position_bias(self):
        """(num_heads, N, N) bias, N = Wh*Ww."""
        N = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, -1).permute(2, 0, 1)

    def attention_bias(self, num_windows, mask=None):
        """
        The additive attention bias of `num_windows` windows (images after one another):
        (1, num_heads, N, N), the relative position bias of every window, or with a
        (windows_per_image, N, N) shift mask (num_windows, num_heads, N, N), bias + mask.

        Without gradients into the table it depends only on the parameters, the mask and the
        number of windows, and is kept for the next call with the same ones (same input size).
        """

        def compute():
            bias = self.relative_position_bias().unsqueeze(0)
            if mask is None:
                return bias
            combined = bias + mask.unsqueeze(1)
            return combined.repeat(num_windows // mask.shape[0], 1, 1, 1)

        table = self.relative_position_bias_table
        if (torch.is_grad_enabled() and table.requires_grad) or is_exporting():
            return compute()
        inputs = (table, self.relative_position_index) + (() if mask is None else (mask,))
        key = (num_windows, table.device, table.dtype) + tuple(
            (tuple(t.shape),) + _identity(t) for t in inputs
        )
        return _cache_lookup(self._bias_cache, key, compute, inputs)

    def attend(self, qkv, mask=None):
        """
        Attention inside windows from their projected tokens, before the output projection.

        Args:
            qkv: (num_windows * B, N, 3 * C) `self.qkv` of the window tokens.
            mask: (num_windows, N, N) additive mask (0 or -100) or None.
        Returns: (num_windows * B, N, C)
        """
        B_, N, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.view(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.attention_bias(B_, mask)
        if (bias.requires_grad and torch.is_grad_enabled()) or is_exporting():
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        else:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=self.scale)
        # The fused kernel lays its output out as (B_, N, heads, head_dim): no copy here.
        return x.transpose(1, 2).reshape(B_, N, C)

    def forward(self, x, mask=None):
        """(num_windows * B, N, C) window tokens -> (num_windows * B, N, C); `mask` as in `attend`."""
        return self.proj_drop(self.proj(self.attend(self.qkv(x), mask)))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual branches."""

    def __init__(
        self,
        dim,
        num_heads,
        window_size=7,
        shift_size=0,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
        norm_layer=nn.LayerNorm,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(
            dim,
            window_size=(window_size, window_size),
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self._rows_cache = []

    def window_rows(self, B, H, W, device):
        """
        `window_token_index` for B images whose H * W tokens lie one after another, each image
        followed by one zero token when the windows need padding: (B * num_windows * N,) `gather`
        (padded positions read the image's zero token), (B * H * W,) `scatter` and whether
        there is padding. Kept for the next call at the same size.
        """

        def compute():
            gather, padded, scatter = window_token_index(H, W, self.window_size, self.shift_size, device)
            has_padding = bool(H % self.window_size or W % self.window_size)
            images = torch.arange(B, device=device)[:, None]
            gather = (gather.masked_fill(padded, H * W) + images * (H * W + has_padding)).reshape(-1)
            scatter = (scatter + images * padded.numel()).reshape(-1)
            return gather, scatter, has_padding

        return _cache_lookup(self._rows_cache, (B, H, W, device), compute)

    def forward(self, x, H, W, shift_mask):
        """
        Args:
            x: (B, H*W, C) tokens.
            shift_mask: (num_windows, N, N) additive mask of the shifted windows, used only when
                this block shifts.
        """
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"Swin block got {L} tokens for a {H}x{W} feature map")
        gather, scatter, has_padding = self.window_rows(B, H, W, x.device)
        tokens = self.norm1(x)
        if has_padding:
            tokens = F.pad(tokens, (0, 0, 0, 1))  # the padding: a zero token, projected once
        # The projections are per token: applied to the tokens themselves rather than to the
        # padded windows, then zero padding, cyclic shift and window partition in one gather.
        qkv = self.attn.qkv(tokens)
        windows = qkv.reshape(-1, 3 * C).index_select(0, gather).view(-1, self.window_size**2, 3 * C)
        windows = self.attn.attend(windows, mask=shift_mask if self.shift_size > 0 else None)
        # Window reverse, shift back and crop in one gather, then the output projection.
        attended = windows.reshape(-1, C).index_select(0, scatter).view(B, L, C)
        x = x + self.drop_path(self.attn.proj_drop(self.attn.proj(attended)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (zero-padding odd sizes) and project 4C -> 2C."""

    def __init__(self, dim, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = OneDNNLinear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x, H, W):
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"PatchMerging got {L} tokens for a {H}x{W} feature map")
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Channel order (top-left, bottom-left, top-right, bottom-right) is fixed by the checkpoints.
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


def shifted_window_mask(H, W, window_size, shift_size, device):
    """
    (num_windows, N, N) additive mask for attention in shifted windows of the zero-padded
    (H, W) map: tokens from different regions of the cyclically shifted map may not attend to
    each other.
    """
    Hp = -(-H // window_size) * window_size
    Wp = -(-W // window_size) * window_size
    # Along each axis, positions fall into three bands: [0, L - window), [L - window, L - shift)
    # and [L - shift, L); a token's region is (row band, column band). Computed arithmetically
    # rather than by slice assignment, whose empty slices (a map no larger than one window) the
    # ONNX exporter cannot record.
    def bands(length):
        position = torch.arange(length, device=device)
        return (position >= length - window_size).long() + (position >= length - shift_size).long()

    region = (bands(Hp)[:, None] * 3 + bands(Wp)[None, :]).to(torch.float32)[None, :, :, None]
    region = window_partition(region, window_size).squeeze(-1)  # (num_windows, N)
    different = region.unsqueeze(1) != region.unsqueeze(2)
    return torch.zeros(different.shape, device=device).masked_fill_(different, _SHIFT_MASK_VALUE)


def window_token_index(H, W, window_size, shift_size, device):
    """
    How a block arranges its tokens in windows. The (H, W) map is zero-padded at the bottom and
    right to multiples of window_size, cyclically shifted by -shift_size along both axes and cut
    into windows (in `window_partition`'s order). Returns, for every window position,
    (num_windows * N,) `gather`, the row-major index of its token in the H x W map (0 for
    padding) and `padded`, whether it holds padding; and for every token, (H * W,) `scatter`,
    its window position.
    """
    Hp = -(-H // window_size) * window_size
    Wp = -(-W // window_size) * window_size
    # Position r of the shifted map holds position (r + shift) mod Hp of the padded one.
    rows = (torch.arange(Hp, device=device) + shift_size) % Hp
    cols = (torch.arange(Wp, device=device) + shift_size) % Wp
    padded = (rows[:, None] >= H) | (cols[None, :] >= W)
    source = (rows[:, None] * W + cols[None, :]).masked_fill(padded, 0)

    def partition(grid):
        return window_partition(grid[None, :, :, None], window_size).reshape(-1)

    # And token (r, c) lands at ((r - shift) mod Hp, (c - shift) mod Wp) of the shifted map.
    rows = (torch.arange(H, device=device) - shift_size) % Hp
    cols = (torch.arange(W, device=device) - shift_size) % Wp
    window = (rows // window_size)[:, None] * (Wp // window_size) + (cols // window_size)[None, :]
    offset = (rows % window_size)[:, None] * window_size + (cols % window_size)[None, :]
    scatter = window * window_size**2 + offset
    return partition(source), partition(padded), scatter.reshape(-1)


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks alternating regular and shifted windows, then downsampling."""

    def __init__(
        self,
        dim,
        depth,
        num_heads,
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
        norm_layer=nn.LayerNorm,
        downsample=None,
        use_checkpoint=False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim=dim,
                    num_heads=num_heads,
                    window_size=window_size,
                    shift_size=0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                    norm_layer=norm_layer,
                )
                for i in range(depth)
            ]
        )
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample is not None else None
        self._mask_cache = []

    def forward(self, x, H, W):
        """Returns (stage output, H, W, input of the next stage, its H, its W)."""
        shift_mask = None
        if self.depth > 1:
            shift_mask = _cache_lookup(
                self._mask_cache,
                (H, W, x.device, x.dtype),
                lambda: shifted_window_mask(H, W, self.window_size, self.shift_size, x.device).to(x.dtype),
            )
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint.checkpoint(blk, x, H, W, shift_mask, use_reentrant=False)
            else:
                x = blk(x, H, W, shift_mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (strided conv), with zero padding to a multiple of the patch."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        _, _, H, W = x.shape
        pad_r = (-W) % self.patch_size[1]
        pad_b = (-H) % self.patch_size[0]
        if pad_r or pad_b:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x)  # (B, C, Wh, Ww)
        if self.norm is not None:
            Wh, Ww = x.shape[2:]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(-1, self.embed_dim, Wh, Ww)
        return x


class SwinTransformer(nn.Module):
    """
    Swin Transformer feature extractor returning the normalized output of every stage in
    `out_indices` as {"res{i+2}": (B, C_i, H_i, W_i)}.
    """

    def __init__(
        self,
        pretrain_img_size=224,
        patch_size=4,
        in_chans=3,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
        norm_layer=nn.LayerNorm,
        ape=False,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        use_checkpoint=False,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"Swin DEPTHS {list(depths)} and NUM_HEADS {list(num_heads)} differ in length")
        self.pretrain_img_size = pretrain_img_size
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages

        self.patch_embed = PatchEmbed(
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            norm_layer=norm_layer if patch_norm else None,
        )

        if self.ape:
            patches = (pretrain_img_size // patch_size, pretrain_img_size // patch_size)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *patches))
            trunc_normal_(self.absolute_pos_embed, std=0.02)

        self.pos_drop = nn.Dropout(p=drop_rate)

        # Stochastic depth grows linearly over all blocks of all stages.
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()

        self.layers = nn.ModuleList()
        for i_layer in range(self.num_layers):
            first = sum(depths[:i_layer])
            self.layers.append(
                BasicLayer(
                    dim=int(embed_dim * 2**i_layer),
                    depth=depths[i_layer],
                    num_heads=num_heads[i_layer],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[first : first + depths[i_layer]],
                    norm_layer=norm_layer,
                    downsample=PatchMerging if i_layer < self.num_layers - 1 else None,
                    use_checkpoint=use_checkpoint,
                )
            )

        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        for i_layer in self.out_indices:
            self.add_module(f"norm{i_layer}", norm_layer(self.num_features[i_layer]))

        self.apply(self._init_weights)
        self._freeze_stages()

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad = False
        if self.frozen_stages >= 2:
            frozen.append(self.pos_drop)
            frozen.extend(self.layers[: self.frozen_stages - 1])
        for m in frozen:
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x):
        x = self.patch_embed(x)
        # Plain ints: the stages derive window padding and masks from them in Python, which a
        # tracer (ONNX / TorchScript export) can only record as constants, consistently so.
        Wh, Ww = int(x.shape[2]), int(x.shape[3])
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=(Wh, Ww), mode="bicubic")
            x = x + pos
        x = self.pos_drop(x.flatten(2).transpose(1, 2))

        outs = {}
        for i in range(self.num_layers):
            x_out, H, W, x, Wh, Ww = self.layers[i](x, Wh, Ww)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs[f"res{i + 2}"] = (
                    x_out.view(-1, H, W, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
                )
        return outs


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(SwinTransformer, Backbone):
    """`SwinTransformer` configured from MODEL.SWIN, with Detectron2's Backbone interface."""

    @configurable
    def __init__(self, *, out_features, **swin_kwargs):
        super().__init__(**swin_kwargs)
        self._out_features = list(out_features)
        names = [f"res{i + 2}" for i in range(self.num_layers)]
        unknown = [f for f in self._out_features if f not in names]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES has unknown features {unknown}; valid: {names}")
        self._out_feature_strides = {n: 4 * 2**i for i, n in enumerate(names)}
        self._out_feature_channels = dict(zip(names, self.num_features))

    @classmethod
    def from_config(cls, cfg, input_shape):
        swin = cfg.MODEL.SWIN
        return {
            "pretrain_img_size": swin.PRETRAIN_IMG_SIZE,
            "patch_size": swin.PATCH_SIZE,
            "in_chans": 3,
            "embed_dim": swin.EMBED_DIM,
            "depths": list(swin.DEPTHS),
            "num_heads": list(swin.NUM_HEADS),
            "window_size": swin.WINDOW_SIZE,
            "mlp_ratio": swin.MLP_RATIO,
            "qkv_bias": swin.QKV_BIAS,
            "qk_scale": swin.QK_SCALE,
            "drop_rate": swin.DROP_RATE,
            "attn_drop_rate": swin.ATTN_DROP_RATE,
            "drop_path_rate": swin.DROP_PATH_RATE,
            "norm_layer": nn.LayerNorm,
            "ape": swin.APE,
            "patch_norm": swin.PATCH_NORM,
            "use_checkpoint": swin.USE_CHECKPOINT,
            "out_features": swin.OUT_FEATURES,
        }

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"D2SwinTransformer takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        outputs = super().forward(x)
        return {k: v for k, v in outputs.items() if k in self._out_features}

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self):
        return 32
