"""2-D (dilated) neighborhood attention with relative positional bias, in plain PyTorch.

Neighborhood attention lets every query attend to a K x K window of keys around it. Dilation D
spreads the window: positions are split into D interleaved groups per axis (``i % D``) and a query
only sees keys of its own group. At the borders the window is *shifted* inside the map, never
padded, so every query always has exactly K * K neighbours. These rules are those of the NATTEN
kernels (<= 0.17) that the published DiNAT checkpoints were trained with. Per axis of length L:

    group g = i % D, place p = i // D, group length Lg = ceil((L - g) / D)
    window start s = clamp(p - K // 2, 0, Lg - K)
    neighbour j (0 <= j < K) sits at (s + j) * D + g, its bias index is (s + j) - p + K - 1

The bias of a 2-D neighbour is ``rpb[head, row_index, col_index]`` and neighbours are ordered
row-major. Every axis must be at least K * D long (callers pad smaller maps, see
:class:`NeighborhoodAttention2D`).

Two implementations, chosen by size (``implementation="auto"``):

* ``"gather"`` materialises the K * K neighbours of every query (memory ~ H*W*K*K*head_dim);
  the fastest on small maps.
* ``"tiled"`` never does: the queries of each dilation group are cut into square tiles of a few
  places per axis; the neighbourhoods of a tile all lie in one region of at most
  (tile + K - 1)^2 keys, so each tile is one dense matrix product with a -inf mask for keys
  outside a query's window (about 2.4x the exact work for K = 11, but in large matrix products).
  Tiles are gathered and processed in chunks, which bounds peak memory; it is the fastest path on
  large maps.

``natten`` (an importable version that still has ``rpb``, i.e. < 0.20) is used for CUDA tensors
when ``implementation="auto"``, or on request with ``implementation="natten"``.
"""
import functools
import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "neighborhood_attention_2d",
    "natten_with_rpb",
    "NeighborhoodAttention2D",
    "IMPLEMENTATIONS",
]

IMPLEMENTATIONS = ("auto", "gather", "tiled", "natten")

# "auto" gathers neighbours while the gathered keys take at most this many elements per batch
# item (about 16 MB in fp32); beyond it the tiled path is faster and leaner.
_GATHER_MAX_ELEMENTS = 4 * 1024 * 1024
# Attention logits the tiled path holds at once per chunk (about 64 MB in fp32).
_TILED_CHUNK_ELEMENTS = 16 * 1024 * 1024
# Query tiles span about this many places of a dilation group per axis: smaller tiles waste less
# work on keys outside the windows, larger ones make better matrix products.
_TILE_TARGET = 7


def _check_axis(name, length, kernel_size, dilation):
    if kernel_size < 2 or kernel_size % 2 == 0:
        raise ValueError(f"Neighborhood attention needs an odd kernel size > 1, got {kernel_size}.")
    if dilation < 1:
        raise ValueError(f"Neighborhood attention needs a dilation >= 1, got {dilation}.")
    if length < kernel_size * dilation:
        raise ValueError(
            f"Neighborhood attention: the feature map {name} ({length}) is smaller than "
            f"kernel_size * dilation = {kernel_size} * {dilation} = {kernel_size * dilation}; "
            "pad the input first (NeighborhoodAttention2D does)."
        )


def _axis_window_starts(length, kernel_size, dilation, places):
    """Window start of each (group, place) of one axis, as a (dilation, places) tensor.

    Places beyond a group's length (padding added by the tiled path) reuse the window of the
    group's last place, so they always have valid neighbours.
    """
    group = torch.arange(dilation)
    group_length = (length - group + dilation - 1) // dilation
    place = torch.arange(places)
    place = torch.minimum(place[None, :], group_length[:, None] - 1)
    start = (place - kernel_size // 2).clamp(min=0)
    return torch.minimum(start, group_length[:, None] - kernel_size), place


@functools.lru_cache(maxsize=64)
def _gather_indices(length, kernel_size, dilation):
    """Per position of one axis: its K neighbour positions and their rpb indices, (L, K) each."""
    places = (length + dilation - 1) // dilation
    start, place = _axis_window_starts(length, kernel_size, dilation, places)
    position = torch.arange(length)
    group, place_of = position % dilation, position // dilation
    start = start[group, place_of]
    offsets = torch.arange(kernel_size)
    neighbours = (start[:, None] + offsets) * dilation + group[:, None]
    bias_index = start[:, None] + offsets - place_of[:, None] + kernel_size - 1
    return neighbours, bias_index


def _gather_attention(query, key, value, rpb, kernel_size, dilation, attn_drop, training):
    batch, heads, height, width, head_dim = query.shape
    rows, row_bias = _gather_indices(height, kernel_size, dilation)
    cols, col_bias = _gather_indices(width, kernel_size, dilation)
    device = query.device
    flat = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(-1).to(device)
    window = kernel_size * kernel_size

    keys = key.reshape(batch, heads, height * width, head_dim)[:, :, flat]
    keys = keys.view(batch, heads, height, width, window, head_dim)
    logits = torch.einsum("bhxyd,bhxynd->bhxyn", query, keys)
    bias = rpb[:, row_bias[:, None, :, None].to(device), col_bias[None, :, None, :].to(device)]
    attn = (logits + bias.reshape(heads, height, width, window)).softmax(dim=-1)
    attn = F.dropout(attn, attn_drop, training)

    values = value.reshape(batch, heads, height * width, head_dim)[:, :, flat]
    values = values.view(batch, heads, height, width, window, head_dim)
    return torch.einsum("bhxyn,bhxynd->bhxyd", attn, values)


def _axis_tiles(length, kernel_size, dilation, tile_target):
    """How the tiled path cuts one axis into tiles of query places, each with its key region.

    Returns per "axis tile" (one tile of one dilation group), all as tensors:
        query_pos (n, tile): query positions (padding places repeat the group's last position);
        key_pos (n, region): positions of the region's keys (clamped; out-of-range ones are masked);
        relative (n, tile, region): rpb index of each (query, key) pair, 2K - 1 for keys outside
            the query's window (that entry of the padded rpb is -inf);
        slot (length,): for every position, its axis tile and place in it: tile_id * tile + place.
    """
    places = (length + dilation - 1) // dilation
    # Groups shorter than 2K places get tiles of about K - 1 places: their regions span (nearly)
    # the whole group whatever the tile size, and fewer, larger matrix products are faster. Longer
    # groups get ``tile_target``: smaller tiles waste less work on keys outside the windows.
    target = tile_target if places >= 2 * kernel_size else kernel_size - 1
    tiles = max(1, round(places / target))
    tile = (places + tiles - 1) // tiles
    padded = tiles * tile

    start, place = _axis_window_starts(length, kernel_size, dilation, padded)
    tile_start = start.view(dilation, tiles, tile)
    region_start = tile_start[:, :, 0].min(dim=0).values
    region_end = tile_start[:, :, -1].max(dim=0).values + kernel_size
    region = int((region_end - region_start).max())
    key_places = (region_start[:, None] + torch.arange(region))[None, :, None, :]

    inside = (key_places >= tile_start[..., None]) & (key_places < tile_start[..., None] + kernel_size)
    relative = key_places - place.view(dilation, tiles, tile)[..., None] + kernel_size - 1
    relative = torch.where(inside, relative, torch.full_like(relative, 2 * kernel_size - 1))

    group = torch.arange(dilation)
    group_length = (length - group + dilation - 1) // dilation
    query_pos = place.view(dilation, tiles, tile) * dilation + group[:, None, None]
    key_pos = torch.minimum(key_places[0, :, 0, :], group_length[:, None, None] - 1)
    key_pos = key_pos * dilation + group[:, None, None]

    position = torch.arange(length)
    place_of = position // dilation
    slot = (position % dilation * tiles + place_of // tile) * tile + place_of % tile
    return (query_pos.reshape(-1, tile), key_pos.reshape(-1, region),
            relative.reshape(-1, tile, region), slot)


def _sort_by_pattern(relative):
    """Order axis tiles so that tiles sharing a bias pattern are contiguous.

    Returns (order, patterns, blocks): ``patterns`` (U, tile, region) are the distinct patterns,
    ``blocks`` a list of (first, end, pattern index) over the sorted tiles.
    """
    patterns, pattern_of = torch.unique(relative, dim=0, return_inverse=True)
    order = torch.argsort(pattern_of, stable=True)
    counts = torch.bincount(pattern_of, minlength=len(patterns)).tolist()
    blocks, first = [], 0
    for index, count in enumerate(counts):
        blocks.append((first, first + count, index))
        first += count
    return order, patterns, blocks


@functools.lru_cache(maxsize=64)
def _tile_layout(height, width, kernel_size, dilation, tile_target, device):
    """Gather/scatter indices of the tiled path for one map size (cached per size and device)."""
    rows = _axis_tiles(height, kernel_size, dilation, tile_target)
    cols = _axis_tiles(width, kernel_size, dilation, tile_target)
    row_order, row_patterns, row_blocks = _sort_by_pattern(rows[2])
    col_order, col_patterns, col_blocks = _sort_by_pattern(cols[2])
    row_query, row_key = rows[0][row_order], rows[1][row_order]
    col_query, col_key = cols[0][col_order], cols[1][col_order]
    grid_r, grid_c = len(row_order), len(col_order)
    tile_r, tile_c = rows[0].shape[1], cols[0].shape[1]

    # Tiles are (row tile, column tile) pairs of the sorted axis tiles; within a tile, queries and
    # region keys are row-major.
    query_index = row_query[:, None, :, None] * width + col_query[None, :, None, :]
    key_index = row_key[:, None, :, None] * width + col_key[None, :, None, :]
    # Where each position's output lands: its row tile, and (column tile, place in tile) flattened.
    row_slot, col_slot = rows[3], cols[3]
    row_tile = torch.argsort(row_order)[row_slot // tile_r]
    col_tile = torch.argsort(col_order)[col_slot // tile_c]
    in_tile = (row_slot % tile_r)[:, None] * tile_c + (col_slot % tile_c)[None, :]
    output_column = col_tile[None, :] * (tile_r * tile_c) + in_tile
    return {
        "grid": (grid_r, grid_c),
        "tile": tile_r * tile_c,
        "region": rows[1].shape[1] * cols[1].shape[1],
        "query_index": query_index.reshape(grid_r, 1, 1, grid_c, -1).to(device),
        "key_index": key_index.reshape(grid_r, 1, 1, grid_c, -1).to(device),
        "output_row": row_tile[:, None].expand(height, width).reshape(1, -1, 1).to(device),
        "output_column": output_column.reshape(1, -1, 1).to(device),
        "row_patterns": row_patterns.to(device),
        "col_patterns": col_patterns.to(device),
        "row_blocks": row_blocks,
        "col_blocks": col_blocks,
    }


def _tiled_attention(query, key, value, rpb, kernel_size, dilation, attn_drop, training):
    batch, heads, height, width, head_dim = query.shape
    layout = _tile_layout(height, width, kernel_size, dilation, _TILE_TARGET, query.device)
    grid_r, grid_c = layout["grid"]
    tile, region = layout["tile"], layout["region"]
    device = query.device
    batch_index = torch.arange(batch, device=device).view(1, batch, 1, 1, 1)
    head_index = torch.arange(heads, device=device).view(1, 1, heads, 1, 1)

    query, key, value = query.flatten(2, 3), key.flatten(2, 3), value.flatten(2, 3)

    def gather(x, index):
        # Straight into (row tiles, B, heads, column tiles, tile or region, head_dim), whatever
        # the input strides; one chunk of row tiles at a time bounds the memory of the regions.
        return x[batch_index, head_index, index]

    # The bias of every distinct (row pattern, column pattern) pair; -inf outside the windows.
    rpb = F.pad(rpb, (0, 1, 0, 1), value=float("-inf"))
    bias = rpb[:, layout["row_patterns"][:, None, :, None, :, None],
               layout["col_patterns"][None, :, None, :, None, :]]
    bias = bias.reshape(heads, bias.shape[1], bias.shape[2], tile, region)

    per_row = batch * heads * grid_c * tile * region
    chunk = max(1, _TILED_CHUNK_ELEMENTS // per_row)
    outputs = []
    for first in range(0, grid_r, chunk):
        end = min(first + chunk, grid_r)
        keys = gather(key, layout["key_index"][first:end])
        logits = torch.matmul(gather(query, layout["query_index"][first:end]), keys.transpose(-1, -2))
        del keys
        for row_first, row_end, row_pattern in layout["row_blocks"]:
            row_first, row_end = max(row_first, first), min(row_end, end)
            if row_first >= row_end:
                continue
            for col_first, col_end, col_pattern in layout["col_blocks"]:
                block = logits[row_first - first:row_end - first, :, :, col_first:col_end]
                block += bias[:, row_pattern, col_pattern, None]
        attn = F.dropout(logits.softmax(dim=-1), attn_drop, training)
        outputs.append(torch.matmul(attn, gather(value, layout["key_index"][first:end])))
    out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    # Back to positions with one gather, as (B, H, W, heads, head_dim) memory so that the usual
    # (B, H, W, heads * head_dim) reshape of the caller is free; returned as a (B, heads, ...) view.
    out = out.view(grid_r, batch, heads, grid_c * tile, head_dim)
    out = out[layout["output_row"], batch_index.view(batch, 1, 1), head_index.view(1, 1, heads),
              layout["output_column"]]
    return out.view(batch, height, width, heads, head_dim).permute(0, 3, 1, 2, 4)


@functools.lru_cache(maxsize=1)
def natten_with_rpb():
    """``(qk, av)`` from an importable natten that still supports rpb, else None.

    ``qk(query, key, rpb, kernel_size, dilation)`` gives the attention logits and
    ``av(attn, value, kernel_size, dilation)`` the output. natten has spelled these three ways:
    ``natten2dqkrpb(q, k, rpb, dilation)`` (< 0.14.5, kernel size read from rpb),
    ``natten2dqkrpb(q, k, rpb, kernel_size, dilation)`` (0.14.5-0.16) and
    ``na2d_qk(q, k, kernel_size, dilation, rpb=rpb)`` (0.17-0.19); 0.20 dropped rpb.
    """
    try:
        import natten.functional as natten_functional
    except Exception:  # natten is optional; any import failure means "not available"
        return None
    na2d_qk = getattr(natten_functional, "na2d_qk", None)
    if na2d_qk is not None and "rpb" in inspect.signature(na2d_qk).parameters:
        na2d_av = natten_functional.na2d_av
        return (
            lambda query, key, rpb, kernel_size, dilation: na2d_qk(query, key, kernel_size, dilation, rpb=rpb),
            lambda attn, value, kernel_size, dilation: na2d_av(attn, value, kernel_size, dilation),
        )
    qkrpb = getattr(natten_functional, "natten2dqkrpb", None)
    av = getattr(natten_functional, "natten2dav", None)
    if qkrpb is None or av is None:
        return None
    if "kernel_size" in inspect.signature(qkrpb).parameters:
        return qkrpb, av
    return (
        lambda query, key, rpb, kernel_size, dilation: qkrpb(query, key, rpb, dilation),
        lambda attn, value, kernel_size, dilation: av(attn, value, dilation),
    )


def _natten_attention(query, key, value, rpb, kernel_size, dilation, attn_drop, training):
    natten_ops = natten_with_rpb()
    if natten_ops is None:
        raise RuntimeError(
            "implementation='natten' needs natten < 0.20 (the last versions with relative "
            "positional bias); it is not importable here. Use implementation='auto'."
        )
    qk, av = natten_ops
    attn = qk(query, key, rpb, kernel_size, dilation).softmax(dim=-1)
    attn = F.dropout(attn, attn_drop, training)
    return av(attn, value, kernel_size, dilation)


def _choose(query, kernel_size, implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown neighborhood attention implementation {implementation!r}; "
                         f"choose one of {IMPLEMENTATIONS}.")
    if implementation != "auto":
        return implementation
    if query.is_cuda and natten_with_rpb() is not None:
        return "natten"
    heads, height, width, head_dim = query.shape[1:]
    gathered = heads * height * width * kernel_size * kernel_size * head_dim
    return "gather" if gathered <= _GATHER_MAX_ELEMENTS else "tiled"


def neighborhood_attention_2d(query, key, value, rpb, kernel_size, dilation=1, *,
                              attn_drop=0.0, training=False, implementation="auto"):
    """softmax(q . k_neighbours + rpb) @ v_neighbours for every query.

    Args:
        query, key, value: (B, heads, H, W, head_dim); ``query`` already scaled. H and W must be
            at least ``kernel_size * dilation``.
        rpb: (heads, 2K - 1, 2K - 1) relative positional bias, or None for no bias.
        attn_drop, training: dropout on the attention weights (as ``F.dropout``).
        implementation: one of :data:`IMPLEMENTATIONS`.
    Returns:
        (B, heads, H, W, head_dim)
    """
    if query.dim() != 5 or key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            "neighborhood_attention_2d expects query, key and value of one shape "
            f"(B, heads, H, W, head_dim); got {tuple(query.shape)}, {tuple(key.shape)}, "
            f"{tuple(value.shape)}."
        )
    heads, height, width = query.shape[1:4]
    _check_axis("height", height, kernel_size, dilation)
    _check_axis("width", width, kernel_size, dilation)
    if rpb is None:
        rpb = query.new_zeros(heads, 2 * kernel_size - 1, 2 * kernel_size - 1)
    elif rpb.shape != (heads, 2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(
            f"rpb must have shape (heads, 2K-1, 2K-1) = {(heads, 2 * kernel_size - 1, 2 * kernel_size - 1)}, "
            f"got {tuple(rpb.shape)}."
        )
    implementation = _choose(query, kernel_size, implementation)
    run = {"gather": _gather_attention, "tiled": _tiled_attention, "natten": _natten_attention}
    return run[implementation](query, key, value, rpb, kernel_size, dilation, attn_drop, training)


class NeighborhoodAttention2D(nn.Module):
    """Multi-head 2-D neighborhood attention on (B, H, W, C) maps (NATTEN's module, same names).

    Parameters: ``qkv`` (Linear C -> 3C), ``rpb`` (heads, 2K-1, 2K-1), ``proj`` (Linear C -> C).
    Maps smaller than ``kernel_size * dilation`` are zero-padded on the right/bottom to that size
    and the output is cropped back, as the NATTEN versions that trained DiNAT did; the padded
    tokens take part in the attention, which is what the published checkpoints expect.
    """

    def __init__(self, dim, num_heads, kernel_size, dilation=1, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0, implementation="auto"):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"Unknown neighborhood attention implementation {implementation!r}; "
                             f"choose one of {IMPLEMENTATIONS}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.implementation = implementation
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        batch, height, width, channels = x.shape
        window = self.kernel_size * self.dilation
        pad_right, pad_bottom = max(0, window - width), max(0, window - height)
        if pad_right or pad_bottom:
            x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
        padded_h, padded_w = x.shape[1:3]
        qkv = self.qkv(x).reshape(batch, padded_h, padded_w, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
        out = neighborhood_attention_2d(
            query * self.scale, key, value, self.rpb, self.kernel_size, self.dilation,
            attn_drop=self.attn_drop, training=self.training, implementation=self.implementation,
        )
        out = out.permute(0, 2, 3, 1, 4).reshape(batch, padded_h, padded_w, channels)
        if pad_right or pad_bottom:
            out = out[:, :height, :width]
        return self.proj_drop(self.proj(out))

    def extra_repr(self):
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, implementation={self.implementation}")
