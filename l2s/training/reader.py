"""Read a map dataset: :class:`AttentionMapDataset`, a split of its committed records."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2s.errors import L2SError
from l2s.files import DamagedFileError
from .layers import dataset_channels
from .store import REDO, committed_rows, load_dataset_meta


class AttentionMapDataset(torch.utils.data.Dataset):
    """A split of a map dataset: items are ``(maps (2, C, m, m) float32, step index, label index)``.

    Maps are read lazily from the memory-mapped shards (safetensors), so the dataset never holds
    more than the requested item in memory; shard handles are reopened in each DataLoader worker.

    Args:
        dataset_dir: directory written by :func:`make_dataset` / :func:`write_map_dataset`.
        split: "train", "val", or None for all records.
        timesteps: keep only these step indices (the classifier's trained steps).
        prompt_types: keep only these prompt types (e.g. ``("pos",)`` for the leakage ablation).
        class_names: label indices refer to this order (default: the dataset's own).
        layers: a classifier's ``layer_layout``: keep only those layers' channels (a classifier of
            the first K blocks trained on maps of every layer; :mod:`.layers`).
    """

    def __init__(self, dataset_dir: str | Path, split: str | None = "train", timesteps: Sequence[int] | None = None,
                 prompt_types: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 layers: Sequence[Sequence] | None = None) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.meta = load_dataset_meta(self.dataset_dir)
        self.class_names = tuple(class_names or self.meta["class_names"])
        channels = dataset_channels(self.meta, layers)
        self._channels = None if channels is None else torch.tensor(channels)
        rows = committed_rows(self.dataset_dir)  # damaged lines or shards are errors, never dropped quietly
        if split is not None:
            rows = [r for r in rows if r["split"] == split]
        if timesteps is not None:
            wanted = {int(t) for t in timesteps}
            rows = [r for r in rows if int(r["timestep"]) in wanted]
        if prompt_types is not None:
            rows = [r for r in rows if r["prompt_type"] in set(prompt_types)]
        unknown = sorted({r["label"] for r in rows} - set(self.class_names))
        if unknown:
            raise L2SError(f"dataset labels {unknown} are not classes of the classifier "
                           f"({', '.join(self.class_names)})")
        self.records = rows
        self._labels = [self.class_names.index(r["label"]) for r in rows]
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        row = self.records[index]
        maps = stored_maps(self.dataset_dir, row, self._handles)
        if self._channels is not None:
            maps = maps[:, self._channels]
        return maps, int(row["timestep"]), self._labels[index]

    def labels(self) -> list[int]:
        return list(self._labels)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles do not cross process boundaries
        return state


def stored_maps(dataset_dir: Path, row: dict, handles: dict[str, Any]) -> Tensor:
    """The float32 maps (2, C, m, m) of a committed manifest ``row``, from its memory-mapped shard
    (opened once into ``handles``); a shard that cannot give them is an error naming it."""
    from safetensors import safe_open

    try:
        if row["shard"] not in handles:
            handles[row["shard"]] = safe_open(str(dataset_dir / row["shard"]), framework="pt")
        return handles[row["shard"]].get_tensor(row["key"]).float()
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise DamagedFileError(f"{dataset_dir / row['shard']}: cannot read {row['key']} "
                               f"({type(error).__name__}: {error}); {REDO}") from None
