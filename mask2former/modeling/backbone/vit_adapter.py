"""ViT-Adapter on a BEiT / BEiTv2 vision transformer, as a multi-scale Detectron2 backbone.

ViT-Adapter (Chen et al., "Vision Transformer Adapter for Dense Predictions", ICLR 2023) keeps a plain
ViT and adds, beside it, a small convolutional "spatial prior" pyramid at strides 8/16/32. Every
interaction stage first *injects* the pyramid into the ViT tokens (deformable cross-attention from the
tokens to the pyramid, scaled by a learnable per-channel gain that starts near zero), runs its share of
ViT blocks, then *extracts* the updated tokens back into the pyramid (deformable cross-attention the
other way, then a feed-forward layer with a depthwise 3x3 convolution on each scale). The stride-4 map
is the stem's output plus the upsampled stride-8 map; the ViT's final tokens, resized, are added to all
four maps before a BatchNorm each.

Module and parameter names follow the original implementation (czczup/ViT-Adapter, ``detection/``,
``BEiTAdapter``), so its checkpoints load by prefix only; see tools/convert-vit-adapter-*.py.
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as activation_checkpoint
from torch import nn

from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import DropPath, trunc_normal_

from ..pixel_decoder.ops.modules import MSDeformAttn
from .swin import Mlp, relative_position_index, window_partition, window_reverse

__all__ = ["ViTAdapter", "D2ViTAdapter", "reference_points"]

# Input sides must be multiples of this: the spatial-prior pyramid ends at stride 32, and the
# token counts of its three levels must be exactly 4x, 1x and 1/4x the ViT's (stride 16).
SIZE_DIVISIBILITY = 32
_LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _maybe_checkpointed(function, use_checkpoint, *tensors):
    if use_checkpoint and tensors[0].requires_grad:
        return activation_checkpoint.checkpoint(function, *tensors, use_reentrant=False)
    return function(*tensors)


# ---------------------------------------------------------------------------------------------
# The BEiT ViT
# ---------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches -> tokens (B, H*W, C), and the token grid H, W."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        x = self.proj(x)
        height, width = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), height, width


class BEiTAttention(nn.Module):
    """
    Multi-head self-attention with BEiT's parametrisation: one bias-free qkv projection plus separate
    query and value biases (keys get none), and a learned bias per head for every relative offset
    (dy, dx) inside a window_size x window_size window.

    ``windowed``: the token grid is zero-padded to multiples of window_size and attention runs inside
    each window (the padding tokens take part as keys, as in the original). Otherwise the grid must be
    exactly one window.
    """

    def __init__(self, dim, num_heads, window_size, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, windowed=True):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.windowed = windowed
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index((window_size, window_size)))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def relative_position_bias(self):
        """(num_heads, window_size**2, window_size**2) additive attention bias."""
        tokens = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)

    def _attend(self, x):
        """Full self-attention among the tokens of each row of x: (B', N, C) -> (B', N, C)."""
        batch, tokens, channels = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # PyTorch's fused attention: the (N x N) logits of the 56x56 windows (3136 tokens) are the
        # largest tensors of the model; the fused kernel does not keep softmax copies of them.
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self.relative_position_bias().unsqueeze(0).to(q.dtype),
            dropout_p=self.attn_drop.p if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, channels)))

    def forward(self, x, H, W):
        if not self.windowed:
            if H * W != self.window_size**2:
                raise ValueError(
                    f"Global (non-windowed) BEiT attention has a relative position table for a "
                    f"{self.window_size}x{self.window_size} grid, got a {H}x{W} token grid."
                )
            return self._attend(x)
        batch, _, channels = x.shape
        size = self.window_size
        padded_h, padded_w = math.ceil(H / size) * size, math.ceil(W / size) * size
        grid = F.pad(x.view(batch, H, W, channels), (0, 0, 0, padded_w - W, 0, padded_h - H))
        out = self._attend(window_partition(grid, size))
        out = window_reverse(out, size, padded_h, padded_w)
        return out[:, :H, :W].reshape(batch, H * W, channels)


class BEiTBlock(nn.Module):
    """Pre-norm transformer block with layer scale (gamma_1, gamma_2) and stochastic depth."""

    def __init__(
        self,
        dim,
        num_heads,
        window_size,
        windowed,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
        init_values=None,
        use_checkpoint=False,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.norm1 = _LayerNorm(dim)
        self.attn = BEiTAttention(
            dim, num_heads, window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, windowed=windowed
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = _LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        if init_values is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x, H, W):
        def run(x):
            attn = self.attn(self.norm1(x), H, W)
            mlp_input = x + self.drop_path(attn if self.gamma_1 is None else self.gamma_1 * attn)
            mlp = self.mlp(self.norm2(mlp_input))
            return mlp_input + self.drop_path(mlp if self.gamma_2 is None else self.gamma_2 * mlp)

        return _maybe_checkpointed(run, self.use_checkpoint, x)


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------
def reference_points(grid_sizes, device):
    """(1, sum H*W, 1, 2) normalised (x, y) centres of the cells of each (H, W) grid, row-major."""
    points = []
    for height, width in grid_sizes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1))
    return torch.cat(points, 0)[None, :, None, :]


class _DeformableInputs:
    """Where queries look and what they sample, for both directions of the interaction."""

    def __init__(self, image_height, image_width, device):
        pyramid = [(image_height // s, image_width // s) for s in (8, 16, 32)]
        vit = [(image_height // 16, image_width // 16)]
        # Injector: ViT tokens query the three pyramid levels.
        self.injector = self._pack(vit, pyramid, device)
        # Extractor: pyramid tokens query the ViT tokens.
        self.extractor = self._pack(pyramid, vit, device)

    @staticmethod
    def _pack(query_grids, value_grids, device):
        shapes = torch.as_tensor(value_grids, dtype=torch.long, device=device)
        areas = shapes.prod(1)
        starts = torch.cumsum(areas, 0) - areas
        return reference_points(query_grids, device), shapes, starts


def _deformable_attention(attn, query, feat, inputs):
    points, shapes, starts = inputs
    # One reference point per query, shared by every level and every image of the batch.
    points = points.expand(query.shape[0], -1, attn.n_levels, -1)
    return attn(query, points, feat, shapes, starts, None)


class MultiScaleDWConv(nn.Module):
    """A depthwise 3x3 convolution applied separately to the three pyramid levels held in one token
    sequence (strides 8, 16, 32, i.e. grids 2H x 2W, H x W, H/2 x W/2 for an H x W ViT grid)."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, H, W):
        batch, _, channels = x.shape
        grids = [(2 * H, 2 * W), (H, W), (H // 2, W // 2)]
        levels = torch.split(x, [h * w for h, w in grids], dim=1)
        out = []
        for tokens, (h, w) in zip(levels, grids):
            grid = tokens.transpose(1, 2).reshape(batch, channels, h, w)
            out.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = MultiScaleDWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x, H, W):
        x = self.drop(self.act(self.dwconv(self.fc1(x), H, W)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """ViT tokens += gamma * DeformAttn(ViT tokens -> spatial-prior pyramid)."""

    def __init__(self, dim, num_heads, n_points, n_levels, deform_ratio, init_values, use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.query_norm = _LayerNorm(dim)
        self.feat_norm = _LayerNorm(dim)
        self.attn = MSDeformAttn(d_model=dim, n_levels=n_levels, n_heads=num_heads, n_points=n_points, ratio=deform_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, query, feat, inputs):
        def run(query, feat):
            attended = _deformable_attention(self.attn, self.query_norm(query), self.feat_norm(feat), inputs)
            return query + self.gamma * attended

        return _maybe_checkpointed(run, self.use_checkpoint, query, feat)


class Extractor(nn.Module):
    """Pyramid tokens += DeformAttn(pyramid -> ViT tokens), then += ConvFFN (if with_cffn)."""

    def __init__(
        self,
        dim,
        num_heads,
        n_points,
        deform_ratio,
        with_cffn=True,
        cffn_ratio=0.25,
        drop=0.0,
        drop_path=0.0,
        use_checkpoint=False,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.query_norm = _LayerNorm(dim)
        self.feat_norm = _LayerNorm(dim)
        self.attn = MSDeformAttn(d_model=dim, n_levels=1, n_heads=num_heads, n_points=n_points, ratio=deform_ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio), drop=drop)
            self.ffn_norm = _LayerNorm(dim)
            self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, query, feat, inputs, H, W):
        def run(query, feat):
            query = query + _deformable_attention(self.attn, self.query_norm(query), self.feat_norm(feat), inputs)
            if self.with_cffn:
                query = query + self.drop_path(self.ffn(self.ffn_norm(query), H, W))
            return query

        return _maybe_checkpointed(run, self.use_checkpoint, query, feat)


class InteractionBlock(nn.Module):
    """Inject, run this stage's ViT blocks, extract (plus, in the last stage, two more extractions)."""

    def __init__(
        self,
        dim,
        num_heads,
        n_points,
        init_values,
        drop_path,
        with_cffn,
        cffn_ratio,
        deform_ratio,
        extra_extractor=False,
        drop=0.0,
        use_checkpoint=False,
    ):
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, 3, deform_ratio, init_values, use_checkpoint)
        extractor = partial(
            Extractor,
            dim,
            num_heads,
            n_points,
            deform_ratio,
            with_cffn=with_cffn,
            cffn_ratio=cffn_ratio,
            drop=drop,
            drop_path=drop_path,
            use_checkpoint=use_checkpoint,
        )
        self.extractor = extractor()
        self.extra_extractors = nn.Sequential(extractor(), extractor()) if extra_extractor else None

    def forward(self, x, c, blocks, inputs, H, W):
        x = self.injector(x, c, inputs.injector)
        for block in blocks:
            x = block(x, H, W)
        c = self.extractor(c, x, inputs.extractor, H, W)
        for extractor in self.extra_extractors or ():
            c = extractor(c, x, inputs.extractor, H, W)
        return x, c


def _conv_norm_relu(in_channels, out_channels, stride, norm):
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        get_norm(norm, out_channels),
        nn.ReLU(inplace=True),
    ]


class SpatialPriorModule(nn.Module):
    """
    Convolutional pyramid: a ResNet-like stem (three 3x3 convs, max-pool) to stride 4, then strided
    3x3 convs to 8, 16 and 32, each level projected by a 1x1 conv to the ViT width. Returns the stride-4
    map (B, D, H/4, W/4) and the other three levels as token sequences (B, h*w, D).
    """

    def __init__(self, inplanes=64, embed_dim=384, norm="SyncBN"):
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_norm_relu(3, inplanes, 2, norm),
            *_conv_norm_relu(inplanes, inplanes, 1, norm),
            *_conv_norm_relu(inplanes, inplanes, 1, norm),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_norm_relu(inplanes, 2 * inplanes, 2, norm))
        self.conv3 = nn.Sequential(*_conv_norm_relu(2 * inplanes, 4 * inplanes, 2, norm))
        self.conv4 = nn.Sequential(*_conv_norm_relu(4 * inplanes, 4 * inplanes, 2, norm))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, kernel_size=1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, kernel_size=1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)

    def forward(self, x):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        tokens = [fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        return (self.fc1(c1), *tokens)


class ViTAdapter(nn.Module):
    """
    BEiT ViT + adapter. ``forward`` takes (B, 3, H, W) with H and W multiples of 32 and returns the
    four normalised maps at strides 4, 8, 16, 32, each with ``embed_dim`` channels.

    Arguments mirror the original ``BEiTAdapter``; ``window_attn`` / ``window_size`` may be one value
    or one per block, ``interaction_indexes`` lists the [first, last] ViT block of each stage, and
    ``version`` chooses which ViT tokens are added to the outputs: "new" (the original's default) adds
    the final tokens to all four maps, "old" adds each stage's tokens to the map of its scale.
    """

    def __init__(
        self,
        patch_size=16,
        in_chans=3,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        init_values=1e-6,
        window_attn=True,
        window_size=14,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=16,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        with_cffn=True,
        interaction_indexes=((0, 5), (6, 11), (12, 17), (18, 23)),
        add_vit_feature=True,
        version="new",
        norm="SyncBN",
        use_checkpoint=False,
    ):
        super().__init__()
        window_attn = list(window_attn) if isinstance(window_attn, (list, tuple)) else [window_attn] * depth
        window_size = list(window_size) if isinstance(window_size, (list, tuple)) else [window_size] * depth
        for name, values in (("window_attn", window_attn), ("window_size", window_size)):
            if len(values) != depth:
                raise ValueError(f"ViT-Adapter: {name} has {len(values)} entries, depth is {depth}")
        # Like the original, a stage runs blocks stage[0] .. stage[-1].
        interaction_indexes = [(stage[0], stage[-1]) for stage in interaction_indexes]
        covered = [i for first, last in interaction_indexes for i in range(first, last + 1)]
        if covered != list(range(depth)):
            raise ValueError(
                f"ViT-Adapter: interaction_indexes {interaction_indexes} must split blocks 0..{depth - 1} "
                "into consecutive [first, last] stages"
            )
        if version not in ("new", "old"):
            raise ValueError(f"ViT-Adapter: version must be 'new' or 'old', got {version!r}")
        if version == "old" and len(interaction_indexes) != 4:
            raise ValueError("ViT-Adapter: version 'old' adds one stage's tokens per output, so it needs 4 stages")
        self.embed_dim = embed_dim
        self.interaction_indexes = interaction_indexes
        self.add_vit_feature = add_vit_feature
        self.version = version

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path_per_block = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            BEiTBlock(
                embed_dim,
                num_heads,
                window_size[i],
                window_attn[i],
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=drop_path_per_block[i],
                init_values=init_values,
                use_checkpoint=use_checkpoint,
            )
            for i in range(depth)
        )
        self.apply(self._init_vit_weights)

        self.level_embed = nn.Parameter(torch.zeros(3, embed_dim))
        self.spm = SpatialPriorModule(conv_inplane, embed_dim, norm)
        self.interactions = nn.Sequential(
            *[
                InteractionBlock(
                    embed_dim,
                    deform_num_heads,
                    n_points,
                    init_values=0.0 if init_values is None else init_values,
                    # As the original: every extractor gets the ViT's final drop-path rate.
                    drop_path=drop_path_rate,
                    with_cffn=with_cffn,
                    cffn_ratio=cffn_ratio,
                    deform_ratio=deform_ratio,
                    extra_extractor=i == len(interaction_indexes) - 1,
                    use_checkpoint=use_checkpoint,
                )
                for i in range(len(interaction_indexes))
            ]
        )
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)
        self.norm1 = get_norm(norm, embed_dim)
        self.norm2 = get_norm(norm, embed_dim)
        self.norm3 = get_norm(norm, embed_dim)
        self.norm4 = get_norm(norm, embed_dim)
        for module in (self.up, self.spm, self.interactions):
            module.apply(self._init_adapter_weights)
        # The Linear initialisation above also hit the deformable attentions: restore theirs.
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module._reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def _init_vit_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def _init_adapter_weights(cls, m):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            # He initialisation over the fan-out (per group).
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        else:
            cls._init_vit_weights(m)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"ViT-Adapter takes (N, C, H, W) images, got shape {tuple(x.shape)}")
        image_h, image_w = x.shape[-2:]
        if image_h % SIZE_DIVISIBILITY or image_w % SIZE_DIVISIBILITY:
            raise ValueError(
                f"ViT-Adapter needs image sides that are multiples of {SIZE_DIVISIBILITY}, got {image_h}x{image_w}; "
                "pad the batch (MaskFormer pads to the backbone's size_divisibility, 32)."
            )
        inputs = _DeformableInputs(image_h, image_w, x.device)

        c1, c2, c3, c4 = self.spm(x)
        level_sizes = [c2.shape[1], c3.shape[1], c4.shape[1]]
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)

        x, H, W = self.patch_embed(x)
        x = self.pos_drop(x)
        stage_tokens = []
        for (first, last), interaction in zip(self.interaction_indexes, self.interactions):
            x, c = interaction(x, c, self.blocks[first : last + 1], inputs, H, W)
            stage_tokens.append(x)

        batch, dim = x.shape[0], self.embed_dim

        def as_map(tokens, h, w):
            return tokens.transpose(1, 2).reshape(batch, dim, h, w)

        c2, c3, c4 = torch.split(c, level_sizes, dim=1)
        c2 = as_map(c2, 2 * H, 2 * W)
        c3 = as_map(c3, H, W)
        c4 = as_map(c4, H // 2, W // 2)
        c1 = self.up(c2) + c1

        if self.add_vit_feature:
            tokens = stage_tokens if self.version == "old" else [x] * 4
            scales = (4.0, 2.0, 1.0, 0.5)
            maps = []
            for feature, tokens_i, scale in zip((c1, c2, c3, c4), tokens, scales):
                vit = as_map(tokens_i, H, W)
                if scale != 1.0:
                    vit = F.interpolate(vit, scale_factor=scale, mode="bilinear", align_corners=False)
                maps.append(feature + vit)
            c1, c2, c3, c4 = maps

        return [self.norm1(c1), self.norm2(c2), self.norm3(c3), self.norm4(c4)]


@BACKBONE_REGISTRY.register()
class D2ViTAdapter(ViTAdapter, Backbone):
    """`ViTAdapter` configured from MODEL.VIT_ADAPTER, with Detectron2's Backbone interface
    (res2..res5 at strides 4, 8, 16, 32, EMBED_DIM channels each)."""

    _NAMES = ("res2", "res3", "res4", "res5")

    @configurable
    def __init__(self, *, out_features, **kwargs):
        super().__init__(**kwargs)
        unknown = [f for f in out_features if f not in self._NAMES]
        if unknown:
            raise ValueError(f"MODEL.VIT_ADAPTER.OUT_FEATURES has unknown features {unknown}; valid: {list(self._NAMES)}")
        self._out_features = list(out_features)
        self._out_feature_strides = {name: 4 * 2**i for i, name in enumerate(self._NAMES)}
        self._out_feature_channels = {name: self.embed_dim for name in self._NAMES}

    @classmethod
    def from_config(cls, cfg, input_shape):
        va = cfg.MODEL.VIT_ADAPTER
        return {
            "patch_size": va.PATCH_SIZE,
            "in_chans": input_shape.channels,
            "embed_dim": va.EMBED_DIM,
            "depth": va.DEPTH,
            "num_heads": va.NUM_HEADS,
            "mlp_ratio": va.MLP_RATIO,
            "qkv_bias": va.QKV_BIAS,
            "drop_rate": va.DROP_RATE,
            "attn_drop_rate": va.ATTN_DROP_RATE,
            "drop_path_rate": va.DROP_PATH_RATE,
            "init_values": va.INIT_VALUES,
            "window_attn": va.WINDOW_ATTN,
            "window_size": va.WINDOW_SIZE,
            "conv_inplane": va.CONV_INPLANE,
            "n_points": va.N_POINTS,
            "deform_num_heads": va.DEFORM_NUM_HEADS,
            "cffn_ratio": va.CFFN_RATIO,
            "deform_ratio": va.DEFORM_RATIO,
            "with_cffn": va.WITH_CFFN,
            "interaction_indexes": va.INTERACTION_INDEXES,
            "add_vit_feature": va.ADD_VIT_FEATURE,
            "version": va.VERSION,
            "norm": va.NORM,
            "use_checkpoint": va.USE_CHECKPOINT,
            "out_features": va.OUT_FEATURES,
        }

    def forward(self, x):
        return {name: out for name, out in zip(self._NAMES, super().forward(x)) if name in self._out_features}

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self):
        return SIZE_DIVISIBILITY
