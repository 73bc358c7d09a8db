"""DiNAT: Dilated Neighborhood Attention Transformer backbone (Hassani & Shi, 2022).

Module and parameter names follow the published checkpoints (``patch_embed.proj.{0,1}``,
``levels.<i>.blocks.<j>.{norm1,attn.{rpb,qkv,proj},norm2,mlp.{fc1,fc2}}``,
``levels.<i>.downsample.{reduction,norm}``, ``norm<i>``) so that they load key for key.
"""
import torch
import torch.nn as nn
from timm.layers import DropPath

from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec

from .neighborhood_attention import NeighborhoodAttention2D

__all__ = ["DiNAT", "D2DiNAT", "DINAT_VARIANTS"]

# Published variants (ImageNet classification models). The Mask2Former DiNAT-L configs use the
# Large widths with kernel 11 and their own dilations (see configs/**/dinat/*.yaml).
DINAT_VARIANTS = {
    "mini": dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0,
                 drop_path_rate=0.2, kernel_size=7,
                 dilations=((1, 8, 1), (1, 4, 1, 4), (1, 2) * 3, (1,) * 5)),
    "tiny": dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0,
                 drop_path_rate=0.2, kernel_size=7,
                 dilations=((1, 8, 1), (1, 4, 1, 4), (1, 2) * 9, (1,) * 5)),
    "small": dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0,
                  drop_path_rate=0.3, kernel_size=7,
                  dilations=((1, 8, 1), (1, 4, 1, 4), (1, 2) * 9, (1,) * 5)),
    "base": dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0,
                 drop_path_rate=0.5, kernel_size=7, layer_scale=1e-5,
                 dilations=((1, 8, 1), (1, 4, 1, 4), (1, 2) * 9, (1,) * 5)),
    "large": dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0,
                  drop_path_rate=0.3, kernel_size=11,
                  dilations=((1, 14, 1), (1, 4, 1, 7), (1, 2, 1, 3) * 4 + (1, 3), (1,) * 5)),
}


class ConvTokenizer(nn.Module):
    """Two stride-2 3x3 convolutions (no activation between them), then LayerNorm: stride 4."""

    def __init__(self, in_chans, embed_dim, norm_layer):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """Stride-2 3x3 convolution doubling the channels, then LayerNorm; (B, H, W, C) in and out."""

    def __init__(self, dim, norm_layer):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(2 * dim)

    def forward(self, x):
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    def __init__(self, dim, hidden_dim, drop):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class NATBlock(nn.Module):
    """Pre-norm neighborhood attention + MLP block, with optional layer scale (DiNAT-B)."""

    def __init__(self, dim, num_heads, kernel_size, dilation, mlp_ratio, qkv_bias, qk_scale,
                 drop, attn_drop, drop_path, norm_layer, layer_scale, implementation):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2D(
            dim, num_heads, kernel_size, dilation, qkv_bias=qkv_bias, qk_scale=qk_scale,
            attn_drop=attn_drop, proj_drop=drop, implementation=implementation,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x):
        attn = self.attn(self.norm1(x))
        if self.layer_scale:
            x = x + self.drop_path(self.gamma1 * attn)
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        x = x + self.drop_path(attn)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DiNATLevel(nn.Module):
    """One stage: NAT blocks with per-block dilations, then an optional downsampler."""

    def __init__(self, dim, depth, num_heads, kernel_size, dilations, downsample, drop_paths,
                 norm_layer, **block_args):
        super().__init__()
        self.blocks = nn.ModuleList(
            NATBlock(dim, num_heads, kernel_size, dilations[i], drop_path=drop_paths[i],
                     norm_layer=norm_layer, **block_args)
            for i in range(depth)
        )
        self.downsample = ConvDownsampler(dim, norm_layer) if downsample else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class DiNAT(nn.Module):
    """Hierarchical DiNAT; ``forward`` returns {"res2": ..., "res5": ...} as (B, C, H, W) maps."""

    def __init__(self, embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), kernel_size=7,
                 dilations=None, mlp_ratio=3.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.2, layer_scale=None, in_chans=3,
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, implementation="auto"):
        super().__init__()
        num_levels = len(depths)
        if len(num_heads) != num_levels:
            raise ValueError(f"DiNAT: NUM_HEADS {list(num_heads)} must have one entry per stage "
                             f"of DEPTHS {list(depths)}.")
        if dilations is None:
            dilations = [[1] * depth for depth in depths]
        if len(dilations) != num_levels or any(len(d) != n for d, n in zip(dilations, depths)):
            raise ValueError(f"DiNAT: DILATIONS {dilations} must give one dilation per block of "
                             f"DEPTHS {list(depths)}.")
        self.num_features = [embed_dim * 2 ** i for i in range(num_levels)]
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        norm_layer = nn.LayerNorm

        self.patch_embed = ConvTokenizer(in_chans, embed_dim, norm_layer)
        drop_paths = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.levels = nn.ModuleList()
        for i in range(num_levels):
            first = sum(depths[:i])
            self.levels.append(DiNATLevel(
                self.num_features[i], depths[i], num_heads[i], kernel_size, list(dilations[i]),
                downsample=i < num_levels - 1, drop_paths=drop_paths[first:first + depths[i]],
                norm_layer=norm_layer, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                drop=drop_rate, attn_drop=attn_drop_rate, layer_scale=layer_scale,
                implementation=implementation,
            ))
        for i in self.out_indices:
            self.add_module(f"norm{i}", norm_layer(self.num_features[i]))
        self.apply(self._init_weights)
        self._freeze_stages()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 2:
            frozen.extend(self.levels[: self.frozen_stages - 1])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x):
        x = self.patch_embed(x)
        outs = {}
        for i, level in enumerate(self.levels):
            x_out, x = level(x)
            if i in self.out_indices:
                outs[f"res{i + 2}"] = getattr(self, f"norm{i}")(x_out).permute(0, 3, 1, 2).contiguous()
        return outs


@BACKBONE_REGISTRY.register()
class D2DiNAT(DiNAT, Backbone):
    """Detectron2 wrapper reading ``MODEL.DINAT.*`` (the keys of the DiNAT Mask2Former configs)."""

    def __init__(self, cfg, input_shape):
        dinat = cfg.MODEL.DINAT
        super().__init__(
            embed_dim=dinat.EMBED_DIM,
            depths=dinat.DEPTHS,
            num_heads=dinat.NUM_HEADS,
            kernel_size=dinat.KERNEL_SIZE,
            dilations=dinat.DILATIONS,
            mlp_ratio=dinat.MLP_RATIO,
            qkv_bias=dinat.QKV_BIAS,
            qk_scale=dinat.QK_SCALE,
            drop_rate=dinat.DROP_RATE,
            attn_drop_rate=dinat.ATTN_DROP_RATE,
            drop_path_rate=dinat.DROP_PATH_RATE,
            layer_scale=dinat.LAYER_SCALE,
            in_chans=input_shape.channels,
            implementation=dinat.ATTENTION_IMPLEMENTATION,
        )
        unknown = [name for name in dinat.OUT_FEATURES if name not in ("res2", "res3", "res4", "res5")]
        if unknown:
            raise ValueError(f"MODEL.DINAT.OUT_FEATURES: unknown feature(s) {unknown}; "
                             "choose among res2, res3, res4, res5.")
        self._out_features = list(dinat.OUT_FEATURES)
        self._out_feature_strides = {f"res{i + 2}": 4 * 2 ** i for i in range(len(self.num_features))}
        self._out_feature_channels = {f"res{i + 2}": c for i, c in enumerate(self.num_features)}

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"D2DiNAT takes an input of shape (N, C, H, W); got {tuple(x.shape)}.")
        outputs = super().forward(x)
        return {name: outputs[name] for name in self._out_features}

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self):
        return 32
