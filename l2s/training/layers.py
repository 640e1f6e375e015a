"""Layer selection: train (and read) a classifier of some layers on maps stored for every layer.

A map dataset stores every captured layer's maps and names them in its ``layer_layout``; a
classifier whose layout names fewer layers (e.g. the first K transformer blocks,
:func:`l2s.classifier.first_blocks`) reads its channels out of those maps, so one dataset serves
every such classifier and nothing is inverted again.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from l2s.capture import AttentionCapture
from l2s.classifier import (
    ClassifierConfig,
    first_blocks,
    layout_channels,
    layout_channels_count,
)
from l2s.errors import ClassifierMismatchError, L2SError


def dataset_channels(meta: dict, layout: Sequence[Sequence] | None) -> list[int] | None:
    """The channel indices a classifier with ``layout`` reads from a dataset with ``meta``
    (``dataset.json``), or None when it reads all of them as stored."""
    stored = meta.get("layer_layout")
    if layout is None or (stored is not None and [list(e[:2]) for e in layout] == [list(e[:2]) for e in stored]):
        return None
    if stored is None:
        if layout_channels_count(layout) == int(meta["channels"]):
            return None  # a dataset without a layout: the channels must simply match
        raise ClassifierMismatchError(f"the dataset names no layers, so the classifier's {len(layout)} layers "
                                      f"cannot be selected from its {meta['channels']} channels")
    try:
        return layout_channels(stored, layout)
    except ValueError as error:
        raise ClassifierMismatchError(f"the classifier's layers do not fit the dataset: {error}") from None


def first_blocks_of_dataset(meta: dict, k: int) -> list[list]:
    """The layout of the first ``k`` layers the dataset stores (its model's first ``k`` blocks)."""
    stored = meta.get("layer_layout")
    if not stored:
        raise L2SError("the dataset names no layers (no layer_layout): it cannot give the first K blocks")
    try:
        return first_blocks(stored, k)
    except ValueError as error:
        raise L2SError(f"--layers {k}: {error}") from None


def with_first_blocks(config: ClassifierConfig, meta: dict, k: int) -> ClassifierConfig:
    """``config`` reading only the dataset's first ``k`` layers (its layout and channel count)."""
    layout = first_blocks_of_dataset(meta, k)
    return dataclasses.replace(config, layer_layout=layout, channels=layout_channels_count(layout))


def first_layers_capture(model, k: int | None) -> AttentionCapture:
    """A capture installed on every attention layer of ``model`` (``k`` None) or on its first ``k``."""
    capture = AttentionCapture(model)
    if k is None:
        return capture
    names = capture.layer_names
    capture.remove()
    if not 1 <= int(k) <= len(names):
        raise L2SError(f"--layers {k}: the model has {len(names)} attention layers; choose 1 to {len(names)}")
    return AttentionCapture(model, layers=names[: int(k)])
