"""Classifier training on synthetic map datasets: learning, relation leakage, resuming, outputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2s.classifier import ClassifierConfig, RelationClassifier
from l2s.cli.training import train_main
from l2s.training import AttentionMapDataset, write_map_dataset
from l2s.errors import ClassifierMismatchError, L2SError
from l2s.relations import PUBLISHED_CLASSES
from l2s.training import leakage_line, relation_leakage, train_classifier

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


def _paired(n: int, g: torch.Generator, split: str, word_strength: float = 0.1,
            steps: tuple[int, ...] = (1, 3)) -> tuple[torch.Tensor, list[dict]]:
    """Each image's maps twice, as ``make-data`` stores them: with the true word ("pos") and with a
    wrong one ("neg"), the same ``sample_key`` and step index, both labelled with the truth."""
    maps, records = _synthetic(n, g, split, "pos", 0.0, steps)
    maps, neg_records = maps.repeat(2, 1, 1, 1, 1), []
    for i, record in enumerate(records):
        others = [c for c in CLASSES if c != record["label"]]
        word = others[int(torch.randint(len(others), (1,), generator=g))]
        record["sample_key"] = f"{split}-image-{i}"
        neg_records.append(dict(record, prompt_type="neg", relation_word=word))
        maps[i] += word_strength * WORD_PATTERNS[CLASSES.index(record["label"])]
        maps[n + i] += word_strength * WORD_PATTERNS[CLASSES.index(word)]
    return maps, records + neg_records


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


@pytest.fixture(scope="module")
def paired_val_dataset(tmp_path_factory) -> Path:
    """Held-out images, each inverted with the true and with a wrong word (pairs by image)."""
    return _write(tmp_path_factory.mktemp("paired") / "data", [_paired(300, torch.Generator().manual_seed(5), "val")])


def test_training_on_pos_prompts_only_reads_the_relation_word(leakage_dataset, paired_val_dataset, tmp_path):
    # The maps carry both the true geometry and the prompt's word; with pos prompts only the word
    # is an easier, equally perfect cue, and the classifier learns it ("relation leakage").
    result = train_classifier(leakage_dataset, tmp_path / "pos", _config(), epochs=10, batch_size=32, lr=1e-3,
                              prompt_types=("pos",), progress=False)
    assert _accuracy(result.best_dir, leakage_dataset, "pos") >= 0.9
    assert _accuracy(result.best_dir, leakage_dataset, "neg") <= 0.3  # chance is 0.2: it follows the word
    # The same images with the true and with a wrong word: right with the true one, wrong without.
    leakage = relation_leakage(RelationClassifier.load(result.best_dir), paired_val_dataset)
    assert set(leakage) == {"all", "1", "3"} and leakage["all"].n_pairs == 300
    assert leakage["all"].a_correct - leakage["all"].b_correct >= 0.6 * 300 and leakage["all"].p_value < 1e-9
    assert all(leakage[step].a_only > 5 * leakage[step].b_only for step in ("1", "3"))


def test_dual_training_generalises_to_swapped_prompts(leakage_dataset, paired_val_dataset, tmp_path):
    result = train_classifier(leakage_dataset, tmp_path / "dual", _config(), epochs=10, batch_size=32, lr=1e-3,
                              progress=False)
    assert _accuracy(result.best_dir, leakage_dataset, "neg") >= 0.85
    assert _accuracy(result.best_dir, leakage_dataset, "pos") >= 0.85
    leakage = relation_leakage(RelationClassifier.load(result.best_dir), paired_val_dataset)["all"]
    assert abs(leakage.a_correct - leakage.b_correct) <= 0.1 * 300


class _ReadsTheWordAtStep1(torch.nn.Module):
    """Answers with the relation word whose pattern the maps carry at step index 1, and with the
    true geometry (read off the blob centres) at step index 3: leakage confined to one step."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _config()

    def forward(self, maps: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(maps), len(CLASSES))
        for i, (pair, step) in enumerate(zip(maps, steps.tolist())):
            if step == 1:  # the word pattern best matched by the maps (the blobs add alike to every score)
                scores = (pair.sum(dim=(0, 1))[None] * WORD_PATTERNS).sum(dim=(1, 2))
                logits[i, int(scores.argmax())] = 1
                continue
            logits[i, CLASSES.index(_geometry(pair))] = 1
        return logits


def _geometry(pair: torch.Tensor) -> str:
    """The relation of the two blobs' centres of mass (image y grows downward)."""
    ys, xs = torch.meshgrid(torch.arange(SIDE).float(), torch.arange(SIDE).float(), indexing="ij")
    (sx, sy), (ox, oy) = [((m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()) for m in pair.sum(dim=1).clamp(min=0)]
    if abs(sx - ox) < 1.2 and abs(sy - oy) < 1.2:
        return "is"
    if abs(sx - ox) >= abs(sy - oy):
        return "to the left of" if sx < ox else "to the right of"
    return "above" if sy < oy else "below"


def test_leakage_is_measured_per_step_on_the_same_images(paired_val_dataset):
    leakage = relation_leakage(_ReadsTheWordAtStep1(), paired_val_dataset)
    at_1, at_3 = leakage["1"], leakage["3"]
    assert at_1.n_pairs == at_3.n_pairs == 150 and leakage["all"].n_pairs == 300
    assert at_1.a_correct >= 0.9 * 150 and at_1.b_correct <= 0.1 * 150  # follows the word
    assert at_3.a_only == at_3.b_only == 0 and at_3.a_correct >= 0.8 * 150  # the layout: both maps alike
    line = leakage_line(leakage)
    assert re.search(r"minus a wrong one, same images\): \+0\.500 \(p = .+\), right only with the true word 150, only "
                     r"with a wrong one 0; by step index: 1 \+1\.000 \(p = .+\), 3 \+0\.000 \(p = 1\)$", line), line
    assert "no wrong-word" in leakage_line({})


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_resumed_training_ends_identical_to_an_uninterrupted_run(tmp_path):
    g = torch.Generator().manual_seed(1)
    dataset = _write(tmp_path / "data", [_synthetic(160, g, "train"), _synthetic(60, g, "val")])
    kwargs = dict(batch_size=32, lr=3e-3, seed=3, progress=False)
    config = _config(dropout=0.1)  # dropout draws from the global RNG: its state must be restored too
    said = []    # the lines given to on_resume
    straight = train_classifier(dataset, tmp_path / "straight", config, epochs=4, on_resume=said.append, **kwargs)
    train_classifier(dataset, tmp_path / "resumed", config, epochs=2, **kwargs)
    assert said == []
    resumed = train_classifier(dataset, tmp_path / "resumed", config, epochs=4, on_resume=said.append, **kwargs)
    assert resumed.epochs_run == straight.epochs_run == 4
    assert said == [f"l2s: resumed after epoch 2 of the earlier run in {tmp_path / 'resumed'}"]
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
    finished = train_classifier(dataset, tmp_path / "resumed", config, epochs=4, on_resume=said.append, **kwargs)
    assert finished.epochs_run == 4 and said[-1].endswith("holds a finished run (4 epochs): the result is its; "
                                                          "more --epochs continue it, --restart trains again")
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


def test_a_dataset_without_validation_maps_is_refused_saying_how_to_make_some(tmp_path):
    g = torch.Generator().manual_seed(2)
    dataset = _write(tmp_path / "data", [_synthetic(20, g, "train")])   # a few images: all fell in train
    with pytest.raises(L2SError, match=r"^no validation samples in .* at step indices \[1, 3\]: make the dataset "
                                       r"from more labelled images, or with a larger --val-fraction"):
        train_classifier(dataset, tmp_path / "run", _config(), epochs=1, progress=False)


def test_the_model_the_maps_came_from_is_kept_beside_the_weights(tmp_path):
    g = torch.Generator().manual_seed(3)
    records = [dict(r, sample_id=f"s{i:06d}") for i, r in
               enumerate(r for _, rs in (_synthetic(16, g, "train"), _synthetic(8, g, "val")) for r in rs)]
    maps = torch.cat([m for m, _ in (_synthetic(16, g, "train"), _synthetic(8, g, "val"))])
    dataset = write_map_dataset(tmp_path / "data", records, maps, class_names=CLASSES, num_steps=4,
                                model_family="flux-dev", extra={"model": "tiny-dev", "synthetic": False})
    result = train_classifier(dataset, tmp_path / "run", _config(), epochs=1, progress=False)
    training = json.loads((result.best_dir / "training.json").read_text())
    assert (training["model"], training["model_family"]) == ("tiny-dev", "flux-dev")   # steering another says so
    synthetic = write_map_dataset(tmp_path / "synthetic", records, maps, class_names=CLASSES, num_steps=4,
                                  model_family="flux-dev")     # maps of no model: the family is only declared
    result = train_classifier(synthetic, tmp_path / "run2", _config(), epochs=1, progress=False)
    assert "model_family" not in json.loads((result.best_dir / "training.json").read_text())


def test_train_cli_uses_a_preset_sized_from_the_dataset(tmp_path, capsys, umask_022):
    g = torch.Generator().manual_seed(3)
    dataset = _write(tmp_path / "data", [_synthetic(24, g, "train"), _synthetic(8, g, "val")])
    code = train_main([str(dataset), "--out", str(tmp_path / "run"), "--preset", "flux-schnell", "--epochs", "1",
                       "--batch-size", "8", "--quiet"])
    said = capsys.readouterr()
    err = said.err
    assert code == 0, err
    assert said.out == "" and re.match(rf"l2s: best epoch 1 of 1 epoch run \(lowest val loss \d\.\d{{4}}\): val "
                                       rf"accuracy \d\.\d{{3}}; weights in {tmp_path / 'run' / 'best'}\n", err), err
    val_records = len(AttentionMapDataset(dataset, "val", (1, 3)))
    assert re.search(rf"^l2s: best checkpoint, val accuracy by prompt type: pos \d\.\d{{3}} \({val_records}\)", err,
                     re.MULTILINE)
    assert "l2s: best checkpoint, relation leakage: no wrong-word (neg) records to measure it on" in err
    model = RelationClassifier.load(tmp_path / "run" / "best")
    assert model.config.channels == CHANNELS and model.config.timesteps == (1, 3)
    assert model.config.model_family == "flux-schnell" and model.config.d_model == 256  # published sizes
    training = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    assert training["lr"] == 5e-5 and training["batch_size"] == 8
    modes = umask_022(tmp_path / "run")   # best/ and last/ weights as every other file (save_file: 0600)
    assert modes["best/model.safetensors"] == modes["last/model.safetensors"] == modes["log.jsonl"] == 0o644
    assert train_main([str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a dataset
    assert "not an l2s map dataset (dataset.json missing; 'l2s make-data' writes one)" in capsys.readouterr().err
    assert train_main([str(tmp_path / "nodir"), "--out", str(tmp_path / "x")]) == 2
    assert "nodir is not an l2s map dataset (no such folder;" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    assert exit_info.value.code == 0 and "--preset" in capsys.readouterr().out


def test_a_preset_of_another_family_than_the_datasets_is_refused(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    records = [dict(r, sample_id=f"s{i}") for i, r in enumerate(_synthetic(8, g, "train")[1] + _synthetic(4, g, "val")[1])]
    dataset = write_map_dataset(tmp_path / "data", records, torch.rand(12, 2, CHANNELS, SIDE, SIDE),
                                class_names=CLASSES, num_steps=4, model_family="flux-schnell")
    assert train_main([str(dataset), "--out", str(tmp_path / "run"), "--preset", "sd14", "--quiet"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("l2s:")]
    assert line == ("l2s: error: the dataset holds maps of a flux-schnell model but the classifier preset 'sd14' is "
                    "for sd14 models: use the preset 'flux-schnell' ('l2s train': leave --preset out)")
    assert not (tmp_path / "run").exists()
    with pytest.raises(L2SError, match="preset 'flux-dev' is for flux-dev models"):
        train_classifier(dataset, tmp_path / "run", "dev", epochs=1, progress=False)   # aliases too


def said_before_the_first_epoch(run, stream: str, capsys, monkeypatch) -> str:
    """What ``run()`` (a training command) had written to ``stream`` when its first epoch began."""
    from l2s.training.epochs import _Training

    said, epoch = [], _Training.epoch

    def first_reads(self, *args):
        said.append(getattr(capsys.readouterr(), stream))
        return epoch(self, *args)
    with monkeypatch.context() as patched:
        patched.setattr(_Training, "epoch", first_reads)
        assert run() == 0
    return said[0]


def test_a_resumed_run_says_so_before_its_first_epoch_even_quiet(tmp_path, capsys, monkeypatch):
    g = torch.Generator().manual_seed(3)
    dataset = _write(tmp_path / "data", [_synthetic(24, g, "train"), _synthetic(8, g, "val")])
    argv = [str(dataset), "--out", str(tmp_path / "run"), "--preset", "flux-schnell", "--batch-size", "8", "--quiet",
            "--epochs"]
    assert train_main(argv + ["1"]) == 0 and "resumed after" not in capsys.readouterr().err
    said = said_before_the_first_epoch(lambda: train_main(argv + ["2"]), "err", capsys, monkeypatch)
    assert said == f"l2s: resumed after epoch 1 of the earlier run in {tmp_path / 'run'}\n"
    end = capsys.readouterr().err
    assert "resumed after" not in end and end.startswith("l2s: best epoch ")   # the summary stays; said once
    assert train_main(argv + ["2"]) == 0    # nothing left: said at once, then the summary
    assert capsys.readouterr().err.startswith(f"l2s: {tmp_path / 'run'} holds a finished run (2 epochs)")


def test_a_rerun_of_a_run_that_stopped_early_says_so(tmp_path):
    from l2s.training.train import resume_message

    assert resume_message(tmp_path, 7, finished=True, stopped_early=True) == (
        f"l2s: {tmp_path} holds a run that stopped early after 7 epochs (validation stopped improving): the "
        "result is its; --restart trains again")


def test_a_grown_dataset_is_refused_on_resume_and_older_runs_still_resume(tmp_path):
    from l2s.run_folders import STATE_FILE

    g = torch.Generator().manual_seed(5)
    train, val = _synthetic(40, g, "train"), _synthetic(20, g, "val")
    dataset = _write(tmp_path / "data", [train, val])
    grown = _write(tmp_path / "grown", [train, _synthetic(40, g, "train"), val])   # same settings, more maps
    kwargs = dict(batch_size=16, lr=3e-3, seed=0, progress=False)
    train_classifier(dataset, tmp_path / "run", _config(), epochs=1, **kwargs)
    message = r"other settings \(dataset_records.train: 40 -> 80\)"
    with pytest.raises(L2SError, match=message):
        train_classifier(grown, tmp_path / "run", _config(), epochs=2, **kwargs)
    # A run saved before the record counts were: resumes as it did.
    path = tmp_path / "run" / "last" / STATE_FILE
    state = torch.load(path, weights_only=True)
    state["settings"] = json.dumps({k: v for k, v in json.loads(state["settings"]).items() if k != "dataset_records"})
    torch.save(state, path)
    assert train_classifier(dataset, tmp_path / "run", _config(), epochs=2, **kwargs).epochs_resumed == 1


def test_a_run_of_another_process_count_says_how_many_to_resume_it_on(tmp_path):
    import json

    from l2s.run_folders import LAST_DIR, STATE_FILE, read_resume_state

    (tmp_path / LAST_DIR).mkdir()
    state = {"settings": json.dumps({"lr": 1e-3, "processes": 2}), "counters": json.dumps({"epoch": 1})}
    torch.save(state, tmp_path / LAST_DIR / STATE_FILE)
    with pytest.raises(L2SError, match=r"trained on 2 process\(es\), this one has 1: resume it on 2, or rerun with "
                                       r"--restart"):
        read_resume_state(tmp_path, {"lr": 1e-3})      # one process records no count
    with pytest.raises(L2SError, match=r"other settings \(lr: 0.001 -> 0.01, processes: 2 -> 1\)"):
        read_resume_state(tmp_path, {"lr": 1e-2})
    torch.save({**state, "settings": json.dumps({"lr": 1e-3})}, tmp_path / LAST_DIR / STATE_FILE)
    with pytest.raises(L2SError, match=r"trained on 1 process\(es\), this one has 4: resume it on 1"):
        read_resume_state(tmp_path, {"lr": 1e-3, "processes": 4})


def test_a_full_disk_at_a_checkpoint_is_an_os_error_naming_it_and_the_rerun_resumes(tmp_path, full_disk):
    # torch.save to a full disk raised a RuntimeError naming no file (a traceback on the command line).
    import errno

    g = torch.Generator().manual_seed(1)
    dataset = _write(tmp_path / "data", [_synthetic(64, g, "train"), _synthetic(32, g, "val")])
    kwargs = dict(batch_size=32, lr=3e-3, seed=3, progress=False)
    full_disk("state.pt.tmp")
    with pytest.raises(OSError) as caught:
        train_classifier(dataset, tmp_path / "run", _config(), epochs=2, **kwargs)
    assert caught.value.errno == errno.ENOSPC and "state.pt" in str(caught.value)
    assert not list((tmp_path / "run").rglob("*.tmp"))
    assert train_classifier(dataset, tmp_path / "run", _config(), epochs=2, **kwargs).epochs_run == 2


def test_the_run_folder_functions_name_only_types_their_module_imports():
    import inspect
    import typing

    import l2s.run_folders as run_folders

    # typing.get_type_hints (help(), documentation tools) evaluates every annotation: each function of the module
    functions = [f for _, f in inspect.getmembers(run_folders, inspect.isfunction)
                 if f.__module__ == run_folders.__name__]
    assert run_folders.prepare_out_dir in functions
    for function in functions:
        typing.get_type_hints(function)
