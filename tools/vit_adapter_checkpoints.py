"""Conversion of ViT-Adapter checkpoints, shared by tools/convert-vit-adapter-mmdet-to-d2.py and
tools/convert-beitv2-to-d2.py:

* ``convert_mmdet``: ViT-Adapter's MMDetection Mask2Former (``backbone.*``, ``panoptic_head.*``,
  optionally ``ema_*`` copies) -> this repository's MaskFormer state dict;
* ``convert_beit``: a BEiT / BEiTv2 ImageNet checkpoint -> the ViT part of ``D2ViTAdapter``, with the
  relative position tables resized to the detector's windows;
* ``check_layout``: the converted names and shapes against a model built from a config, so that a
  checkpoint of another ViT size or adapter layout fails with the first differences named.
"""
import argparse
import math
import os
import re
from collections import OrderedDict

import numpy as np
import torch

__all__ = [
    "ConversionError",
    "COCO_PANOPTIC_MMDET_CATEGORY_IDS",
    "class_permutation",
    "mmdet_name_to_d2",
    "convert_mmdet",
    "convert_beit",
    "resize_relative_position_table",
    "check_layout",
    "build_meta_model",
]


class ConversionError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# MMDetection Mask2Former -> MaskFormer
# ---------------------------------------------------------------------------------------------
# The config the converted checkpoints fit unless --config-file says otherwise.
RECIPE_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/coco/panoptic-segmentation/vit_adapter/maskformer2_beitv2_adapter_large_16x1_3x.yaml",
)


def converter_parser(description, input_help, fitted_part):
    """The command line both converters share: INPUT OUTPUT [--config-file]; each adds its own options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help=input_help)
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    parser.add_argument(
        "--config-file", default=RECIPE_CONFIG, help=f"config whose {fitted_part} the result must fit"
    )
    return parser


_PIXEL = "sem_seg_head.pixel_decoder."
_PREDICTOR = "sem_seg_head.predictor."
_PARAM = r"(weight|bias)"

# (pattern on the MMDetection name, replacement). MMDetection's transformer layers number their
# sub-modules in the order of `operation_order`: the pixel decoder's encoder layers are
# (self_attn, norm, ffn, norm) and the transformer decoder's (cross_attn, norm, self_attn, norm, ffn, norm).
_HEAD_RULES = [
    (rf"^panoptic_head\.pixel_decoder\.input_convs\.(\d+)\.conv\.{_PARAM}$", _PIXEL + r"input_proj.\1.0.\2"),
    (rf"^panoptic_head\.pixel_decoder\.input_convs\.(\d+)\.gn\.{_PARAM}$", _PIXEL + r"input_proj.\1.1.\2"),
    (
        r"^panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\.attentions\.0\."
        rf"(sampling_offsets|attention_weights|value_proj|output_proj)\.{_PARAM}$",
        _PIXEL + r"transformer.encoder.layers.\1.self_attn.\2.\3",
    ),
    (
        rf"^panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.{_PARAM}$",
        _PIXEL + r"transformer.encoder.layers.\1.linear1.\2",
    ),
    (
        rf"^panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.{_PARAM}$",
        _PIXEL + r"transformer.encoder.layers.\1.linear2.\2",
    ),
    (
        rf"^panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.{_PARAM}$",
        _PIXEL + r"transformer.encoder.layers.\1.norm1.\2",
    ),
    (
        rf"^panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.{_PARAM}$",
        _PIXEL + r"transformer.encoder.layers.\1.norm2.\2",
    ),
    (r"^panoptic_head\.pixel_decoder\.level_encoding\.weight$", _PIXEL + "transformer.level_embed"),
    (r"^panoptic_head\.pixel_decoder\.mask_feature\.(weight|bias)$", _PIXEL + r"mask_features.\1"),
    # FPN levels: MMDetection's lateral/output conv i works on input level i, as our adapter_{i+1} /
    # layer_{i+1}; the convs have no bias (followed by GroupNorm).
    ("^panoptic_head\\.pixel_decoder\\.lateral_convs\\.(\\d+)\\.conv\\.weight$", "@lateral"),
    (rf"^panoptic_head\.pixel_decoder\.lateral_convs\.(\d+)\.gn\.{_PARAM}$", "@lateral_norm"),
    ("^panoptic_head\\.pixel_decoder\\.output_convs\\.(\\d+)\\.conv\\.weight$", "@output"),
    (rf"^panoptic_head\.pixel_decoder\.output_convs\.(\d+)\.gn\.{_PARAM}$", "@output_norm"),
    (
        r"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.attentions\.0\.attn\.(in_proj_weight|in_proj_bias)$",
        _PREDICTOR + r"transformer_cross_attention_layers.\1.multihead_attn.\2",
    ),
    (
        rf"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.attentions\.0\.attn\.out_proj\.{_PARAM}$",
        _PREDICTOR + r"transformer_cross_attention_layers.\1.multihead_attn.out_proj.\2",
    ),
    (
        r"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.(in_proj_weight|in_proj_bias)$",
        _PREDICTOR + r"transformer_self_attention_layers.\1.self_attn.\2",
    ),
    (
        rf"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.out_proj\.{_PARAM}$",
        _PREDICTOR + r"transformer_self_attention_layers.\1.self_attn.out_proj.\2",
    ),
    (
        rf"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.{_PARAM}$",
        _PREDICTOR + r"transformer_ffn_layers.\1.linear1.\2",
    ),
    (
        rf"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.{_PARAM}$",
        _PREDICTOR + r"transformer_ffn_layers.\1.linear2.\2",
    ),
    (
        rf"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.norms\.0\.{_PARAM}$",
        _PREDICTOR + r"transformer_cross_attention_layers.\1.norm.\2",
    ),
    (
        rf"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.norms\.1\.{_PARAM}$",
        _PREDICTOR + r"transformer_self_attention_layers.\1.norm.\2",
    ),
    (
        rf"^panoptic_head\.transformer_decoder\.layers\.(\d+)\.norms\.2\.{_PARAM}$",
        _PREDICTOR + r"transformer_ffn_layers.\1.norm.\2",
    ),
    (rf"^panoptic_head\.transformer_decoder\.post_norm\.{_PARAM}$", _PREDICTOR + r"decoder_norm.\1"),
    (r"^panoptic_head\.(query_embed|query_feat|level_embed)\.weight$", _PREDICTOR + r"\1.weight"),
    (rf"^panoptic_head\.cls_embed\.{_PARAM}$", _PREDICTOR + r"class_embed.\1"),
    (rf"^panoptic_head\.mask_embed\.(\d+)\.{_PARAM}$", "@mask_embed"),
    (r"^(backbone\..+)$", r"\1"),
]
_HEAD_RULES = [(re.compile(pattern), replacement) for pattern, replacement in _HEAD_RULES]


def mmdet_name_to_d2(name):
    """Our name for the MMDetection Mask2Former entry `name`, or None when no rule covers it."""
    for pattern, replacement in _HEAD_RULES:
        match = pattern.match(name)
        if not match:
            continue
        if replacement == "@lateral":
            return f"{_PIXEL}adapter_{int(match.group(1)) + 1}.weight"
        if replacement == "@lateral_norm":
            return f"{_PIXEL}adapter_{int(match.group(1)) + 1}.norm.{match.group(2)}"
        if replacement == "@output":
            return f"{_PIXEL}layer_{int(match.group(1)) + 1}.weight"
        if replacement == "@output_norm":
            return f"{_PIXEL}layer_{int(match.group(1)) + 1}.norm.{match.group(2)}"
        if replacement == "@mask_embed":
            # nn.Sequential(Linear, ReLU, Linear, ReLU, Linear): Linears at 0, 2, 4 -> our MLP layers 0, 1, 2.
            index = int(match.group(1))
            if index % 2:
                return None
            return f"{_PREDICTOR}mask_embed.layers.{index // 2}.{match.group(2)}"
        return match.expand(replacement)
    return None


# COCO panoptic category ids (panoptic_val2017.json) in MMDetection's label order. Its
# CocoPanopticDataset numbers labels by position in `COCO.get_cat_ids()`, i.e. in the order of the
# annotation file's "categories" list, which the official file keeps sorted by id (80 things 1..90,
# then 53 stuff 92..200). Checked against our metadata by `class_permutation`.
COCO_PANOPTIC_MMDET_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
    58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
    88, 89, 90, 92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145,
    147, 148, 149, 151, 154, 155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181, 184, 185,
    186, 187, 188, 189, 190, 191, 192, 193, 194, 195, 196, 197, 198, 199, 200,
]  # fmt: skip


def class_permutation(dataset_id_to_contiguous_id):
    """perm with our class i = MMDetection label perm[i], from our metadata's
    ``stuff_dataset_id_to_contiguous_id`` (all 133 panoptic categories)."""
    if sorted(dataset_id_to_contiguous_id) != sorted(COCO_PANOPTIC_MMDET_CATEGORY_IDS):
        raise ConversionError(
            "The dataset's category ids are not the 133 COCO panoptic categories; "
            "this converter only knows MMDetection's COCO panoptic class order."
        )
    perm = [None] * len(COCO_PANOPTIC_MMDET_CATEGORY_IDS)
    for mmdet_label, category_id in enumerate(COCO_PANOPTIC_MMDET_CATEGORY_IDS):
        perm[dataset_id_to_contiguous_id[category_id]] = mmdet_label
    return perm


def _ema_name(name):
    """MMDetection's EMA hook stores an average of every state entry as a buffer `ema_<name with . -> _>`."""
    return "ema_" + name.replace(".", "_")


def convert_mmdet(state_dict, class_perm=None, use_ema=False, no_object_weight=0.1, log=print):
    """
    MMDetection Mask2Former (ViT-Adapter) state dict -> ours. Raises ConversionError naming every
    entry no rule maps. `class_perm` (see `class_permutation`) reorders the classifier rows (the
    "no object" row stays last); `use_ema` takes the ``ema_*`` copies instead of the live weights.
    Adds ``criterion.empty_weight`` (class weights 1, no-object `no_object_weight`), a buffer our
    model carries.
    """
    ema_entries = {k for k in state_dict if k.startswith("ema_")}
    live = [k for k in state_dict if k not in ema_entries]
    if use_ema and not ema_entries:
        raise ConversionError("--weights ema: the checkpoint has no ema_* entries")
    unmapped = [k for k in live if mmdet_name_to_d2(k) is None]
    if unmapped:
        raise ConversionError(
            f"{len(unmapped)} checkpoint entries have no counterpart in this repository's model "
            f"(not a ViT-Adapter + Mask2Former panoptic checkpoint?): {unmapped[:10]}"
        )
    converted = OrderedDict()
    ema_used = set()
    for name in live:
        value = state_dict[name]
        if use_ema and value.dtype.is_floating_point:
            ema_key = _ema_name(name)
            if ema_key not in ema_entries:
                raise ConversionError(f"--weights ema: no {ema_key} for {name}")
            value = state_dict[ema_key]
            ema_used.add(ema_key)
        converted[mmdet_name_to_d2(name)] = value
        log(f"  {name} -> {mmdet_name_to_d2(name)} {tuple(value.shape)}")
    if use_ema:
        left = sorted(ema_entries - ema_used - {_ema_name(k) for k in live})
        if left:
            raise ConversionError(f"ema_* entries without a live counterpart: {left[:10]}")
        log(f"Took the EMA copies of {len(ema_used)} floating-point entries.")
    elif ema_entries:
        log(
            f"Ignored {len(ema_entries)} ema_* entries (the live weights, which the published numbers "
            "were evaluated with, are converted; --weights ema takes the averages)."
        )

    class_weight = _PREDICTOR + "class_embed.weight"
    if class_weight in converted:
        num_classes = converted[class_weight].shape[0] - 1
        if class_perm is not None:
            if len(class_perm) != num_classes:
                raise ConversionError(
                    f"The classifier has {num_classes} classes, the class order {len(class_perm)}."
                )
            order = torch.tensor(list(class_perm) + [num_classes], device=converted[class_weight].device)
            for suffix in ("weight", "bias"):
                key = _PREDICTOR + "class_embed." + suffix
                converted[key] = converted[key].index_select(0, order)
            identity = list(class_perm) == list(range(num_classes))
            log("Class order: " + ("identical to MMDetection's." if identity else "rows permuted to ours."))
        empty_weight = torch.ones(num_classes + 1, device=converted[class_weight].device)
        empty_weight[-1] = no_object_weight
        converted["criterion.empty_weight"] = empty_weight
    return converted


# ---------------------------------------------------------------------------------------------
# BEiT / BEiTv2 ImageNet -> ViT-Adapter backbone
# ---------------------------------------------------------------------------------------------
# Classifier, class token and masked-image-modelling parts the detector does not have; the relative
# position index is recomputed by the model.
_BEIT_DROPPED = re.compile(
    r"^(cls_token|mask_token|pos_embed|norm\.(weight|bias)|fc_norm\.(weight|bias)|head\.(weight|bias)"
    r"|lm_head\..*|blocks\.\d+\.attn\.relative_position_index|rel_pos_bias\.relative_position_index)$"
)
_BEIT_KEPT = re.compile(
    r"^(patch_embed\.proj\.(weight|bias)|blocks\.\d+\.(gamma_1|gamma_2|norm1\.(weight|bias)|norm2\.(weight|bias)"
    r"|attn\.(q_bias|v_bias|qkv\.weight|proj\.(weight|bias)|relative_position_bias_table)"
    r"|mlp\.fc1\.(weight|bias)|mlp\.fc2\.(weight|bias)))$"
)
# A BEiT table holds (2w-1)^2 relative offsets plus 3 entries for the class token.
_CLS_ENTRIES = 3


def _geometric_source_coordinates(src_side, dst_side):
    """
    Where the source table's offsets sit on the target grid: BEiT spreads them out with a geometric
    progression (step 1 at the centre, growing by a ratio q outwards) so that the outermost source
    offset lands near the target's border, found by bisection of q in [1.01, 1.5].
    """
    half_src, half_dst = src_side // 2, dst_side // 2
    low, high = 1.01, 1.5
    while high - low > 1e-6:
        q = (low + high) / 2.0
        if (1.0 - q**half_src) / (1.0 - q) > half_dst:
            high = q
        else:
            low = q
    positive, position = [], 1.0
    for i in range(half_src):
        positive.append(position)
        position += q ** (i + 1)
    return [-p for p in reversed(positive)] + [0.0] + positive


def resize_relative_position_table(table, window_size):
    """
    A BEiT relative-position table (rows: (2s-1)^2 offsets + 3 class-token rows, columns: heads)
    for windows of `window_size`: the class-token rows are dropped; if the offset grid differs, each
    head's grid is resampled with a bicubic interpolating spline at geometrically spaced source
    positions (BEiT's method, as ViT-Adapter applies it when loading ImageNet weights).
    """
    dst_side = 2 * window_size - 1
    src_side = int(math.isqrt(table.shape[0] - _CLS_ENTRIES))
    if src_side * src_side + _CLS_ENTRIES != table.shape[0]:
        raise ConversionError(
            f"A relative position table of {table.shape[0]} rows is not (2s-1)^2 + {_CLS_ENTRIES} rows"
        )
    offsets = table[: src_side * src_side]
    if src_side == dst_side:
        return offsets.clone()
    from scipy.interpolate import RectBivariateSpline

    source = np.asarray(_geometric_source_coordinates(src_side, dst_side))
    half = dst_side // 2
    target = np.arange(-half, half + 0.1, 1.0)
    heads = []
    for head in range(table.shape[1]):
        grid = offsets[:, head].reshape(src_side, src_side).float().numpy()
        # Exact interpolation (s=0) with cubic pieces along rows (dy) and columns (dx).
        spline = RectBivariateSpline(source, source, grid, kx=3, ky=3, s=0)
        heads.append(torch.from_numpy(spline(target, target)).reshape(-1))
    return torch.stack(heads, dim=1).to(table.dtype)


def _expand_shared_relative_bias(state_dict, depth):
    """BEiT checkpoints trained with one shared table carry it as rel_pos_bias.*: give each block a copy."""
    shared = state_dict.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None:
        for i in range(depth):
            state_dict.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())


def convert_beit(state_dict, window_sizes, prefix="backbone.", log=print):
    """BEiT ImageNet state dict -> backbone entries (``prefix`` + the original names), with each
    block's table resized to `window_sizes[block]`. Refuses entries it does not know."""
    state_dict = OrderedDict(state_dict)
    _expand_shared_relative_bias(state_dict, len(window_sizes))
    unknown = [k for k in state_dict if not (_BEIT_DROPPED.match(k) or _BEIT_KEPT.match(k))]
    if unknown:
        raise ConversionError(f"{len(unknown)} entries are not parts of a BEiT ViT: {unknown[:10]}")
    converted = OrderedDict()
    for name, value in state_dict.items():
        if _BEIT_DROPPED.match(name):
            log(f"  dropped {name} {tuple(value.shape)}")
            continue
        block = re.match(r"^blocks\.(\d+)\.", name)
        if block and int(block.group(1)) >= len(window_sizes):
            raise ConversionError(
                f"{name}: the checkpoint has more blocks than the {len(window_sizes)} of the configured ViT"
            )
        if name.endswith("relative_position_bias_table"):
            window = window_sizes[int(block.group(1))]
            new = resize_relative_position_table(value, window)
            log(f"  {name} {tuple(value.shape)} -> {prefix}{name} {tuple(new.shape)} (window {window})")
            value = new
        else:
            log(f"  {name} -> {prefix}{name} {tuple(value.shape)}")
        converted[prefix + name] = value
    return converted


# ---------------------------------------------------------------------------------------------
# Checking against a model
# ---------------------------------------------------------------------------------------------
def build_meta_model(config_file, opts=()):
    """The model of `config_file` on the meta device (names and shapes only, no memory)."""
    import mask2former  # noqa: F401  (applies the Detectron2 compatibility layer first)
    from detectron2.modeling import build_model

    from mask2former.engine.setup import load_config

    cfg = load_config(config_file, list(opts))
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return cfg, build_model(cfg)


def check_layout(converted, model, prefix="", require_all=True):
    """
    Raises ConversionError naming the first entries whose names or shapes differ between `converted`
    and the state dict of `model` (restricted to `prefix`); `require_all`: the model's entries must
    all be present (a full detector) rather than a subset (a backbone initialisation).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)}
    got = {k: tuple(v.shape) for k, v in converted.items()}
    unexpected = [k for k in got if k not in expected]
    missing = [k for k in expected if k not in got] if require_all else []
    mismatched = [f"{k}: checkpoint {got[k]}, model {expected[k]}" for k in got if k in expected and got[k] != expected[k]]
    if unexpected or missing or mismatched:
        lines = []
        if mismatched:
            lines.append(f"{len(mismatched)} shape mismatches, first: {mismatched[:5]}")
        if missing:
            lines.append(f"{len(missing)} model entries missing, first: {missing[:5]}")
        if unexpected:
            lines.append(f"{len(unexpected)} entries the model does not have, first: {unexpected[:5]}")
        raise ConversionError(
            "The checkpoint does not fit the configured model (another ViT size or adapter layout?): "
            + "; ".join(lines)
        )
