"""Layer layouts: which attention layers (and how many heads each) make up a classifier's channels.

A layout is a list of ``[layer_name, heads, [h, w]]`` entries in the order the model runs the
layers (:meth:`l2s.capture.AttentionCapture.layer_layout`). A classifier whose layout names only
the first K transformer blocks lets steering cut the forward right after block K, so the backward
is short too: :func:`first_blocks` makes such a layout and :func:`layout_channels` finds its
channels inside maps stored for a larger layout (a map dataset made with every layer).
"""
from __future__ import annotations

from collections.abc import Sequence

# FLUX.1 transformer: 19 double-stream blocks, then 38 single-stream blocks, 24 heads each.
FLUX_DOUBLE_BLOCKS, FLUX_SINGLE_BLOCKS, FLUX_HEADS = 19, 38, 24


def flux_layout(double_blocks: int = FLUX_DOUBLE_BLOCKS, single_blocks: int = FLUX_SINGLE_BLOCKS,
                heads: int = FLUX_HEADS, grid: tuple[int, int] = (32, 32)) -> list[list]:
    """Every attention layer of a FLUX transformer, in execution order (FLUX.1-dev by default;
    ``grid``: the token grid of the image size, 32x32 at 512 px; informational)."""
    names = ([f"transformer_blocks.{i}.attn" for i in range(double_blocks)]
             + [f"single_transformer_blocks.{i}.attn" for i in range(single_blocks)])
    return [[name, heads, list(grid)] for name in names]


def entry_heads(entry: Sequence) -> int:
    """Channels one layout entry contributes: a head count or a list of head indices."""
    heads = entry[1]
    return len(heads) if isinstance(heads, (list, tuple)) else int(heads)


def layout_channels_count(layout: Sequence[Sequence]) -> int:
    """Channels per object of a layout (the sum of its heads)."""
    return sum(entry_heads(entry) for entry in layout)


def first_blocks(layout: Sequence[Sequence], k: int) -> list[list]:
    """The first ``k`` layers of ``layout`` (one attention layer per transformer block: the first
    ``k`` blocks the model runs); ``ValueError`` unless 1 <= k <= len(layout)."""
    if not 1 <= int(k) <= len(layout):
        raise ValueError(f"cannot keep the first {k} layers of a layout of {len(layout)}: "
                         f"choose 1 to {len(layout)}")
    return [list(entry) for entry in layout[: int(k)]]


def _channel_blocks(layout: Sequence[Sequence]) -> dict[str, tuple[int, int]]:
    """name -> (first channel, heads) as the stored maps order them: grouped by grid, smallest
    grid first, execution order within a grid (as :func:`l2s.capture.resize_maps_for_classifier`)."""
    grids = sorted({tuple(entry[2]) for entry in layout}, key=lambda hw: (hw[0] * hw[1], hw))
    blocks, offset = {}, 0
    for grid in grids:
        for entry in layout:
            if tuple(entry[2]) == grid:
                blocks[entry[0]] = (offset, entry_heads(entry))
                offset += entry_heads(entry)
    return blocks


def layout_channels(full: Sequence[Sequence], sub: Sequence[Sequence]) -> list[int]:
    """Channel indices, into maps stored for layout ``full``, of the maps a classifier with layout
    ``sub`` reads, in the order it reads them.

    ``sub``'s layers must be layers of ``full`` with the same heads, in ``full``'s (execution)
    order: at steering time the capture records them in that order. Grids are not compared (they
    follow the image size; the classifier resizes every map to its own side).
    """
    position = {entry[0]: i for i, entry in enumerate(full)}
    full_by_name = {entry[0]: entry for entry in full}
    missing = [entry[0] for entry in sub if entry[0] not in position]
    if missing:
        raise ValueError(f"layers {missing} are not in the stored layout")
    order = [position[entry[0]] for entry in sub]
    if order != sorted(set(order)):
        raise ValueError("a layout must name each layer once, in the order the model runs them")
    for entry in sub:
        if list(entry[1:2]) != list(full_by_name[entry[0]][1:2]):
            raise ValueError(f"layer {entry[0]}: heads {entry[1]} differ from the stored {full_by_name[entry[0]][1]}")
    # The sub layout's own channel order uses its entries' grids as stored in the full layout.
    stored_grids = [[entry[0], entry[1], list(full_by_name[entry[0]][2])] for entry in sub]
    blocks = _channel_blocks(full)
    sub_blocks = _channel_blocks(stored_grids)
    channels = [0] * layout_channels_count(sub)
    for name, (start, heads) in sub_blocks.items():
        channels[start:start + heads] = range(blocks[name][0], blocks[name][0] + heads)
    return channels
