"""Classifier training on synthetic map datasets: learning, relation leakage, resuming, outputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2s.classifier import ClassifierConfig, RelationClassifier
from l2s.data import AttentionMapDataset, write_map_dataset
from l2s.errors import ClassifierMismatchError, L2SError
from l2s.relations import PUBLISHED_CLASSES
from l2s.train import train_classifier, train_main

CLASSES = PUBLISHED_CLASSES  # above, below, is, to the left of, to the right of
CHANNELS, SIDE = 8, 16
# One fixed random 16x16 pattern per relation *word*: a stand-in for what the prompt's relation
# word does to real attention maps (the text embedding shifts every map a little).
WORD_PATTERNS = torch.randn(len(CLASSES), SIDE, SIDE, generator=torch.Generator().manual_seed(123))




def _blob(x: float, y: float, sigma: float = 1.5) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(SIDE).float(), torch.arange(SIDE).float(), indexing="ij")
    return torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _centres(label: str, g: torch.Generator) -> tuple[tuple[float, float], tuple[float, float]]:
    """Random subject / object centres whose geometry is ``label`` (image y grows downward)."""
    if label == "is":  # attribute and object: the same place
        x, y = _uniform(g, 2, 13), _uniform(g, 2, 13)
        return (x, y), (x + _uniform(g, -1, 1), y + _uniform(g, -1, 1))
    gap, drift = _uniform(g, 4, 9), _uniform(g, -2, 2)
    start, across = _uniform(g, 2, 13 - gap), _uniform(g, 2, 13)
    if label in ("to the left of", "to the right of"):
        first, second = (start, across), (start + gap, across + drift)
        return (first, second) if label == "to the left of" else (second, first)
    first, second = (across, start), (across + drift, start + gap)
    return (first, second) if label == "above" else (second, first)


def _synthetic(n: int, g: torch.Generator, split: str, prompt_type: str = "pos", word_strength: float = 0.0,
               steps: tuple[int, ...] = (1, 3)) -> tuple[torch.Tensor, list[dict]]:
    """Maps of two Gaussian blobs placed by the true relation, plus the prompt's word pattern.

    ``prompt_type`` "pos": the word is the label; "neg": a word drawn from the other classes.
    """
    maps = torch.zeros(n, 2, CHANNELS, SIDE, SIDE)
    records = []
    for i in range(n):
        label = CLASSES[int(torch.randint(len(CLASSES), (1,), generator=g))]
        others = [c for c in CLASSES if c != label]
        word = label if prompt_type == "pos" else others[int(torch.randint(len(others), (1,), generator=g))]
        subject, obj = _centres(label, g)
        gain = (0.5 + torch.rand(CHANNELS, generator=g))[:, None, None]
        maps[i, 0] = gain * _blob(*subject)
        maps[i, 1] = gain * _blob(*obj)
        maps[i] += 0.05 * torch.rand(2, CHANNELS, SIDE, SIDE, generator=g)
        maps[i] += word_strength * WORD_PATTERNS[CLASSES.index(word)]
        records.append({"label": label, "timestep": steps[i % len(steps)], "split": split,
                        "prompt_type": prompt_type, "relation_word": word})
    return maps, records


def _write(path: Path, parts: list[tuple[torch.Tensor, list[dict]]]) -> Path:
    records = [dict(r, sample_id=f"s{i:06d}") for i, r in enumerate(r for _, rs in parts for r in rs)]
    return write_map_dataset(path, records, torch.cat([m for m, _ in parts]), class_names=CLASSES, num_steps=4,
                             shard_size=200)


def _config(**overrides) -> ClassifierConfig:
    small = dict(channels=CHANNELS, timesteps=(1, 3), num_timesteps=4, d_model=32, pe_length=CHANNELS,
                 extractor_layers=1, extractor_heads=2, extractor_ff=64, pool_heads=2, head_layers=1,
                 head_heads=2, head_ff=64, fc_dims=(32, 16), dropout=0.0, model_family="custom")
    return ClassifierConfig(**{**small, **overrides})


@torch.no_grad()
def _accuracy(checkpoint: Path, dataset: Path, prompt_type: str) -> float:
    model = RelationClassifier.load(checkpoint)
    data = AttentionMapDataset(dataset, "val", prompt_types=[prompt_type])
    maps = torch.stack([data[i][0] for i in range(len(data))])
    steps = torch.tensor([data[i][1] for i in range(len(data))])
    return (model(maps, steps).argmax(1) == torch.tensor(data.labels())).float().mean().item()


def test_geometric_relations_are_learned(tmp_path):
    g = torch.Generator().manual_seed(0)
    # Step index 2 is not a trained step of the config: those maps must be left out.
    dataset = _write(tmp_path / "data", [_synthetic(900, g, "train", steps=(1, 2, 3)),
                                         _synthetic(200, g, "val", steps=(1, 3))])
    result = train_classifier(dataset, tmp_path / "run", _config(), epochs=10, batch_size=32, lr=1e-3,
                              progress=False)
    assert result.best_val_accuracy >= 0.9
    assert _accuracy(result.best_dir, dataset, "pos") == pytest.approx(result.best_val_accuracy, abs=1e-6)
    assert result.epochs_run == 10 and not result.stopped_early

    # Outputs: best checkpoint in RelationClassifier format + training.json, last/ + state.pt, log.
    best = RelationClassifier.load(result.best_dir)
    assert best.config.channels == CHANNELS and best.config.class_names == CLASSES
    training = json.loads((result.best_dir / "training.json").read_text())
    assert training["train_samples"] == 600 and training["val_samples"] == 200  # steps 1 and 3 only
    assert training["best_epoch"] == result.best_epoch and training["weight_decay"] == 0.05
    state = torch.load(result.last_dir / "state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "shuffle_rng", "cpu_rng", "counters"} <= set(state)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == list(range(1, 11))
    assert set(log[-1]["val_accuracy_per_step"]) == {"1", "3"} == set(log[-1]["train_accuracy_per_step"])
    assert sum(row["best"] for row in log) >= 1 and log[result.best_epoch - 1]["best"]


@pytest.fixture(scope="module")
def leakage_dataset(tmp_path_factory) -> Path:
    """Train and val, each with pos prompts (word = label) and neg prompts (word random, label true)."""
    g = torch.Generator().manual_seed(0)
    parts = [_synthetic(500, g, "train", "pos", 0.1), _synthetic(500, g, "train", "neg", 0.1),
             _synthetic(300, g, "val", "pos", 0.1), _synthetic(300, g, "val", "neg", 0.1)]
    return _write(tmp_path_factory.mktemp("leakage") / "data", parts)


def test_training_on_pos_prompts_only_reads_the_relation_word(leakage_dataset, tmp_path):
    # The maps carry both the true geometry and the prompt's word; with pos prompts only the word
    # is an easier, equally perfect cue, and the classifier learns it ("relation leakage").
    result = train_classifier(leakage_dataset, tmp_path / "pos", _config(), epochs=10, batch_size=32, lr=1e-3,
                              prompt_types=("pos",), progress=False)
    assert _accuracy(result.best_dir, leakage_dataset, "pos") >= 0.9
    assert _accuracy(result.best_dir, leakage_dataset, "neg") <= 0.3  # chance is 0.2: it follows the word


def test_dual_training_generalises_to_swapped_prompts(leakage_dataset, tmp_path):
    result = train_classifier(leakage_dataset, tmp_path / "dual", _config(), epochs=10, batch_size=32, lr=1e-3,
                              progress=False)
    assert _accuracy(result.best_dir, leakage_dataset, "neg") >= 0.85
    assert _accuracy(result.best_dir, leakage_dataset, "pos") >= 0.85


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_resumed_training_ends_identical_to_an_uninterrupted_run(tmp_path):
    g = torch.Generator().manual_seed(1)
    dataset = _write(tmp_path / "data", [_synthetic(160, g, "train"), _synthetic(60, g, "val")])
    kwargs = dict(batch_size=32, lr=3e-3, seed=3, progress=False)
    config = _config(dropout=0.1)  # dropout draws from the global RNG: its state must be restored too
    straight = train_classifier(dataset, tmp_path / "straight", config, epochs=4, **kwargs)
    train_classifier(dataset, tmp_path / "resumed", config, epochs=2, **kwargs)
    resumed = train_classifier(dataset, tmp_path / "resumed", config, epochs=4, **kwargs)
    assert resumed.epochs_run == straight.epochs_run == 4
    for kind in ("last", "best"):
        a, b = _weights(tmp_path / "straight" / kind), _weights(tmp_path / "resumed" / kind)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    # Not a tautology: another seed trains to other weights.
    other = train_classifier(dataset, tmp_path / "other", config, epochs=4, **{**kwargs, "seed": 4})
    assert not torch.equal(_weights(other.last_dir)["relation_classifier.fc.0.weight"],
                           _weights(straight.last_dir)["relation_classifier.fc.0.weight"])
    # A finished run resumes to a no-op; other settings are refused; resume=False starts over.
    assert train_classifier(dataset, tmp_path / "resumed", config, epochs=4, **kwargs).epochs_run == 4
    with pytest.raises(L2SError, match="other settings.*lr"):
        train_classifier(dataset, tmp_path / "resumed", config, epochs=5, **{**kwargs, "lr": 1e-3})
    fresh = train_classifier(dataset, tmp_path / "resumed", config, epochs=1, resume=False, **kwargs)
    assert fresh.epochs_run == 1 and len(fresh.history) == 1


def test_mismatched_classifier_is_refused(tmp_path):
    g = torch.Generator().manual_seed(2)
    dataset = _write(tmp_path / "data", [_synthetic(20, g, "train"), _synthetic(10, g, "val")])
    with pytest.raises(ClassifierMismatchError, match="maps per object"):
        train_classifier(dataset, tmp_path / "run", _config(channels=6, pe_length=6), epochs=1, progress=False)
    with pytest.raises(ClassifierMismatchError, match="step indices"):
        train_classifier(dataset, tmp_path / "run", _config(timesteps=(0, 2)), epochs=1, progress=False)


def test_train_cli_uses_a_preset_sized_from_the_dataset(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    dataset = _write(tmp_path / "data", [_synthetic(24, g, "train"), _synthetic(8, g, "val")])
    code = train_main([str(dataset), "--out", str(tmp_path / "run"), "--preset", "flux-schnell", "--epochs", "1",
                       "--batch-size", "8", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    val_records = len(AttentionMapDataset(dataset, "val", (1, 3)))
    assert re.search(rf"val accuracy by prompt type: pos \d\.\d{{3}} \({val_records}\)", err)
    model = RelationClassifier.load(tmp_path / "run" / "best")
    assert model.config.channels == CHANNELS and model.config.timesteps == (1, 3)
    assert model.config.model_family == "flux-schnell" and model.config.d_model == 256  # published sizes
    training = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    assert training["lr"] == 5e-5 and training["batch_size"] == 8
    assert train_main([str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a dataset
    assert "not an l2s map dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    assert exit_info.value.code == 0 and "--preset" in capsys.readouterr().out
