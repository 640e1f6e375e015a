"""Relation leakage: does a classifier read the relation word instead of the layout?

Records are compared in pairs: the maps of an image inverted with its true relation word
("pos") against the same image's maps inverted with a wrong word ("neg"). A classifier that
ignores the word scores both alike.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from l2s.classifier import RelationClassifier
from l2s.evaluation import PairedComparison, paired_comparison
from .reader import AttentionMapDataset
from .train import VAL_BATCH_SIZE


def _record_key(row: dict) -> str:
    return f"{row['shard']}:{row['key']}"


def _image_step_key(row: dict) -> str:
    """The source image and step index of a record: a "pos" and a "neg" record share it (the same
    image inverted with the true and with a wrong relation word)."""
    return f"{row.get('sample_key', row['sample_id'])}@{row['timestep']}"


@torch.no_grad()
def record_hits(model: RelationClassifier, dataset_dir: str | Path, split: str | None = "val",
                device: str = "cpu", batch_size: int = VAL_BATCH_SIZE) -> dict[str, dict[str, bool]]:
    """Whether ``model`` classifies each record of a dataset split right, grouped by prompt type
    (``"pos"``: the prompt had the true relation word, ``"neg"``: a wrong one). Records are keyed
    by shard and key, so the hits of two classifiers on the same dataset pair up."""
    dataset = AttentionMapDataset(dataset_dir, split, model.config.timesteps, None, model.config.class_names,
                                  model.config.layer_layout)
    model = model.to(device).eval()
    hits: dict[str, dict[str, bool]] = defaultdict(dict)
    rows = iter(dataset.records)  # the loader keeps the dataset's order
    for maps, steps, labels in DataLoader(dataset, batch_size=batch_size):
        right = (model(maps.to(device), steps.to(device)).argmax(dim=1).cpu() == labels).tolist()
        for hit, row in zip(right, rows):  # hits first: zip must not pull a row past the batch
            hits[row["prompt_type"]][_record_key(row)] = hit
    return dict(hits)


def relation_leakage(model: RelationClassifier, dataset_dir: str | Path, split: str | None = "val",
                     device: str = "cpu") -> dict[str, PairedComparison]:
    """How much ``model`` reads the relation word instead of the layout: its hits on an image's maps
    inverted with the true word (``a``, "pos") against the same image's maps inverted with a wrong
    word (``b``, "neg"), paired by image and step index. Keys: ``"all"`` and each step index (as a
    string). A classifier that ignores the word scores both alike; one that reads it is right more
    often with the true word. Empty when the split has no "neg" records."""
    return leakage_from_hits(record_hits(model, dataset_dir, split, device), dataset_dir, split)


def leakage_from_hits(hits: dict[str, dict[str, bool]], dataset_dir: str | Path,
                      split: str | None = "val") -> dict[str, PairedComparison]:
    """:func:`relation_leakage` from hits :func:`record_hits` already made (default keys) on that
    dataset split: records are re-keyed by image and step from the manifest, no inference."""
    image_step = {_record_key(row): _image_step_key(row) for row in AttentionMapDataset(dataset_dir, split).records}
    pos, neg = ({image_step[k]: hit for k, hit in hits.get(kind, {}).items()} for kind in ("pos", "neg"))
    if not pos or not neg:
        return {}
    steps = sorted({k.rsplit("@", 1)[1] for k in pos}, key=int)
    by_step = {step: paired_comparison({k: v for k, v in pos.items() if k.endswith(f"@{step}")}, neg)
               for step in steps}
    return {"all": paired_comparison(pos, neg), **by_step}


def leakage_gap(c: PairedComparison) -> str:
    """One leakage figure: accuracy with the true word minus with a wrong one, and its sign test."""
    return f"{(c.a_correct - c.b_correct) / c.n_pairs:+.3f} (p = {c.p_value:.2g})"


def leakage_by_step(leakage: dict[str, PairedComparison]) -> str:
    """``"1 +0.020 (p = 0.035), 3 ..."``: :func:`leakage_gap` per step index."""
    return ", ".join(f"{step} {leakage_gap(c)}" for step, c in leakage.items() if step != "all")


def leakage_line(leakage: dict[str, PairedComparison]) -> str:
    """One line of :func:`relation_leakage`: accuracy with the true word minus with a wrong one."""
    if not leakage:
        return "relation leakage: no wrong-word (neg) records to measure it on"
    overall = leakage["all"]
    return (f"relation leakage (val accuracy with the true word minus a wrong one, same images): "
            f"{leakage_gap(overall)}, right only with the true word {overall.a_only}, only with a wrong one "
            f"{overall.b_only}; by step index: {leakage_by_step(leakage)}")


def compare_classifiers(a: RelationClassifier, b: RelationClassifier, dataset_dir: str | Path,
                        split: str | None = "val", device: str = "cpu") -> dict[str, PairedComparison]:
    """``a`` against ``b`` on the same held-out maps, per prompt type. The leakage check: a classifier
    trained without wrong-word inversions loses accuracy on ``"neg"`` maps, whose prompt names
    another relation than the one drawn."""
    return compare_hits(record_hits(a, dataset_dir, split, device), record_hits(b, dataset_dir, split, device))


def compare_hits(hits_a: dict[str, dict[str, bool]], hits_b: dict[str, dict[str, bool]]) -> dict[str, PairedComparison]:
    """:func:`compare_classifiers` from hits :func:`record_hits` already made."""
    return {kind: paired_comparison(hits_a[kind], hits_b.get(kind, {})) for kind in sorted(hits_a)}



def validation_report(checkpoint: str | Path, dataset_dir: str | Path, device: str = "cpu") -> list[str]:
    """A checkpoint's validation accuracy per prompt type, on every validation record (also the
    types it did not train on), and its relation leakage (:func:`relation_leakage`), a line each: a
    classifier that reads the relation word back out of the maps loses accuracy on "neg" maps
    (wrong word in the prompt)."""
    model = RelationClassifier.load(checkpoint)
    hits = record_hits(model, dataset_dir, "val", device)
    by_type = ", ".join(f"{kind} {sum(h.values()) / len(h):.3f} ({len(h)})" for kind, h in sorted(hits.items()))
    return [f"val accuracy by prompt type: {by_type or 'no records'}",
            leakage_line(leakage_from_hits(hits, dataset_dir, "val"))]
