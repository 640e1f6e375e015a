"""Write maps that did not come from :func:`l2s.training.make_dataset` in the same format:
synthetic datasets and conversions (:func:`resize_map_dataset`)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from l2s.errors import L2SError
from l2s.files import output_lock
from .reader import AttentionMapDataset
from .sources import digest
from .store import MAP_DTYPES, META_FILE, dataset_meta, load_dataset_meta, shard_name
from .writer import DatasetWriter


def write_map_dataset(out_dir: str | Path, records: Sequence[dict], maps: Tensor, *, class_names: Sequence[str],
                      channels: int | None = None, map_size: int | None = None,
                      store_steps: Sequence[int] | None = None,
                      num_steps: int | None = None, model_family: str = "custom", shard_size: int = 256,
                      dtype: str = "float32", extra: dict | None = None, orig_map_size: int | None = None,
                      layer_layout: list | None = None) -> Path:
    """Write maps that did not come from :func:`make_dataset` in the same on-disk format.

    ``records``: one dict per map pair with at least ``label`` (a class name), ``timestep`` and
    ``split``; ``sample_id``, ``prompt_type`` ("pos"), ``image_id`` etc. are filled in when absent.
    ``maps``: ``(N, 2, C, m, m)``. Used for synthetic datasets (tests, demonstrations) and
    conversions (:func:`resize_map_dataset`), which pass on the source's ``orig_map_size`` (default:
    the map size) and ``layer_layout``.
    """
    out_dir = Path(out_dir)
    with output_lock(out_dir, kind="make-data"):
        return _write_map_dataset(out_dir, records, maps, class_names, channels, map_size, store_steps, num_steps,
                                  model_family, shard_size, dtype, extra, orig_map_size, layer_layout)


def _write_map_dataset(out_dir: Path, records: Sequence[dict], maps: Tensor, class_names: Sequence[str],
                       channels: int | None, map_size: int | None, store_steps: Sequence[int] | None,
                       num_steps: int | None, model_family: str, shard_size: int, dtype: str, extra: dict | None,
                       orig_map_size: int | None, layer_layout: list | None) -> Path:
    if (out_dir / META_FILE).exists():
        raise L2SError(f"{out_dir} already holds a dataset")
    if len(records) != maps.shape[0]:
        raise ValueError(f"{len(records)} records but {maps.shape[0]} map pairs")
    class_names = list(class_names)
    channels = channels or maps.shape[2]
    map_size = map_size or maps.shape[-1]
    store_steps = sorted({int(r["timestep"]) for r in records}) if store_steps is None else list(store_steps)
    settings = {"model_family": model_family, "class_names": class_names, "synthetic": True, **(extra or {})}
    meta = dataset_meta(settings, dict(channels=channels, map_size=map_size, orig_map_size=orig_map_size or map_size,
                                       class_names=class_names, store_steps=store_steps,
                                       num_steps=num_steps or (max(store_steps) + 1), model_family=model_family,
                                       **({"layer_layout": layer_layout} if layer_layout is not None else {})))
    writer = DatasetWriter(out_dir, meta)
    for chunk, start in enumerate(range(0, len(records), shard_size)):
        rows, tensors = [], {}
        for i in range(start, min(start + shard_size, len(records))):
            row = dict(records[i])
            row.setdefault("sample_id", f"synthetic-{i:07d}")
            row.setdefault("key", row["sample_id"])
            row.setdefault("prompt_type", "pos")
            row.setdefault("image_id", row["sample_id"])
            row.setdefault("sample_key", row["sample_id"])
            row["label_index"] = class_names.index(row["label"])
            row.update(chunk=chunk, shard=shard_name(chunk))
            rows.append(row)
            tensors[row["key"]] = maps[i].to(MAP_DTYPES[dtype]).contiguous()
        writer.commit(chunk, digest(str(chunk))[:16], rows, tensors, [])
    return out_dir


def resize_map_dataset(source_dir: str | Path, out_dir: str | Path, map_size: int, shard_size: int = 256) -> Path:
    """A copy of a map dataset with every map brought to ``map_size`` as :func:`make_dataset` would
    have stored it with that ``map_size`` (:func:`l2s.capture.resize_maps_for_classifier`: bilinear,
    renormalised), the same records and splits: to ask what a classifier reads at another grain
    without inverting again. The copy's settings name the source's settings hash."""
    from l2s.capture import resize_maps_for_classifier

    meta = load_dataset_meta(source_dir)
    grid = int(meta["map_size"])
    if map_size == grid:
        raise L2SError(f"{source_dir} already has {grid}x{grid} maps")
    source = AttentionMapDataset(source_dir, split=None)
    if not len(source):
        raise L2SError(f"{source_dir} holds no committed records to resize")
    maps = torch.stack([resize_maps_for_classifier([(source[i][0], (grid, grid))], map_size)
                        for i in range(len(source))])
    written = ("chunk", "shard", "label_index")  # write_map_dataset assigns these anew
    records = [{k: v for k, v in row.items() if k not in written} for row in source.records]
    return write_map_dataset(out_dir, records, maps, class_names=meta["class_names"], channels=meta["channels"],
                             map_size=map_size, store_steps=meta["store_steps"], num_steps=meta["num_steps"],
                             model_family=meta["model_family"], shard_size=shard_size,
                             dtype=meta["settings"].get("dtype", "float32"),
                             extra={"synthetic": bool(meta["settings"].get("synthetic", False)),
                                    "resized_from": meta["settings_hash"], "source_map_size": grid},
                             orig_map_size=meta.get("orig_map_size"), layer_layout=meta.get("layer_layout"))
