"""Nothing lost, nothing silent: damaged datasets, damaged training state, options checked before any
work, and training that stops at once when its loss stops being finite."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import l2s.cli.training as cli_training
from l2s.classifier import ClassifierConfig
from l2s.cli.training import make_data_main, train_main
from l2s.demo import tiny_flux_pipeline
from l2s.errors import L2SError
from l2s.files import DamagedFileError, FolderBusyError
from l2s.relations import PUBLISHED_CLASSES
from l2s.training import (
    AttentionMapDataset,
    RelationSample,
    TrainingDivergedError,
    make_dataset,
    train_classifier,
    verify_dataset,
    write_map_dataset,
)

RELATIONS = ("left of", "above", "below", "right of")
MAKE = dict(steps=4, store_steps=(1, 3), size=32, shard_size=1, val_fraction=0.5, seed=7,
            max_sequence_length=64, progress=False)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline(seed=0)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[RelationSample]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(1)
    out = []
    for i in range(4):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(root / f"img{i}.png")
        out.append(RelationSample(f"img{i}", root / f"img{i}.png", "cat", RELATIONS[i], "dog", "test"))
    return out


@pytest.fixture(scope="module")
def reference(flux, samples, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "data"
    make_dataset(samples, flux, out, **MAKE)
    return out


@pytest.fixture
def copy(reference, tmp_path) -> Path:
    shutil.copytree(reference, tmp_path / "data")
    return tmp_path / "data"


def _fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of every file a dataset is made of (the lock file aside; the lines of a JSON-lines
    file in any order: a redone chunk's lines come last)."""
    def content(path: Path) -> bytes:
        data = path.read_bytes()
        return b"\n".join(sorted(data.splitlines())) if path.suffix == ".jsonl" else data

    return {str(p.relative_to(folder)): hashlib.sha256(content(p)).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".l2s.lock"}


def _remake(flux, samples, out: Path, **extra) -> list[int]:
    """Rerun make-data; the indices of the samples it had to invert again."""
    redone: list[int] = []
    make_dataset(samples, flux, out, on_sample=redone.append, **{**MAKE, **extra})
    return redone


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

def test_commit_records_each_shards_size_and_checksum(reference):
    progress = json.loads((reference / "progress.json").read_text())
    assert sorted(progress["chunks"]) == ["0", "1", "2", "3"]
    for chunk, info in progress["chunks"].items():
        shard = reference / "shards" / f"shard-{int(chunk):05d}.safetensors"
        assert info["bytes"] == shard.stat().st_size
        assert info["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert verify_dataset(reference) == 4 * 2 * 2  # samples x (pos, neg) x stored steps


@pytest.fixture
def checksum_bars(monkeypatch) -> list:
    """The bars l2s.training.store opens over the shards' checksums, each with ``shown`` and the
    bytes it ``counted``."""
    import l2s.training.store as store

    opened = []

    class Recorded(store.tqdm):
        def __init__(self, **kwargs):
            opened.append(self)
            self.shown, self.counted = not kwargs.get("disable"), 0
            super().__init__(**{**kwargs, "disable": True})

        def update(self, n=1):
            self.counted += n

    monkeypatch.setattr(store, "tqdm", Recorded)
    return opened


def test_the_checksums_of_a_rerun_or_a_training_get_a_progress_bar(flux, samples, copy, checksum_bars, tmp_path):
    """Reading every shard of a dataset of many GB takes minutes: they were silent before the first
    sample or epoch. The bar counts the shards' bytes, and --quiet (progress=False) keeps it off."""
    size = sum(shard.stat().st_size for shard in (copy / "shards").glob("*.safetensors"))
    verify_dataset(copy, progress=True)
    verify_dataset(copy)
    assert [(bar.shown, bar.total, bar.counted) for bar in checksum_bars] == [(True, size, size), (False, size, size)]
    checksum_bars.clear()
    assert _remake(flux, samples, copy, progress=True) == []
    train_classifier(copy, tmp_path / "run", "flux-schnell", epochs=1, progress=True)
    assert [bar.counted for bar in checksum_bars if bar.shown] == [size, size]   # the rerun's, the training's


def test_a_truncated_shard_is_an_error_at_load_and_redone_by_make_data(flux, samples, reference, copy):
    shard = copy / "shards" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match=r"shard-00001.safetensors is damaged \(\d+ bytes, \d+ committed\);"
                                               r" rerun the 'l2s make-data' command"):
        AttentionMapDataset(copy, None)
    assert _remake(flux, samples, copy) == [1]  # only the damaged chunk
    assert _fingerprint(copy) == _fingerprint(reference)


def test_a_changed_byte_is_caught_by_the_checksum_before_training(flux, samples, reference, copy, tmp_path):
    shard = copy / "shards" / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size, other maps
    shard.write_bytes(bytes(data))
    assert len(AttentionMapDataset(copy, None)) == 16  # the cheap size check at load passes ...
    with pytest.raises(DamagedFileError, match="shard-00002.safetensors is damaged .checksum"):
        verify_dataset(copy)  # ... the checksum does not, and training checks it first
    with pytest.raises(DamagedFileError, match="checksum"):
        train_classifier(copy, tmp_path / "run", "flux-schnell", epochs=1, progress=False)
    assert not (tmp_path / "run").exists()  # no checkpoint, no log: the folder it made went again
    assert _remake(flux, samples, copy) == [2]
    assert _fingerprint(copy) == _fingerprint(reference)


def test_a_torn_manifest_line_is_an_error_naming_it_never_a_silent_stop(flux, samples, reference, copy):
    manifest = copy / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[4] = lines[4][:30] + "\n"
    manifest.write_text("".join(lines))
    with pytest.raises(DamagedFileError, match=r"manifest.jsonl line 5 is damaged"):
        AttentionMapDataset(copy, "train")
    assert _remake(flux, samples, copy) == [1]  # line 5 belongs to chunk 1 (4 lines per sample)
    assert _fingerprint(copy) == _fingerprint(reference)


def test_missing_or_repeated_records_are_refused_and_repaired(flux, samples, reference, copy):
    manifest = copy / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines + lines[:4]))  # what two writers into one folder used to leave
    with pytest.raises(DamagedFileError, match=r"line 17 repeats the record of line 1"):
        AttentionMapDataset(copy, None)
    assert _remake(flux, samples, copy) == [0]
    assert _fingerprint(copy) == _fingerprint(reference)
    manifest.write_text("".join(lines[:-1]))  # a committed line lost
    with pytest.raises(DamagedFileError, match="has 3 lines of chunk 3, 4 were committed"):
        AttentionMapDataset(copy, None)


def test_damaged_state_files_say_how_to_recover(flux, samples, reference, copy):
    (copy / "progress.json").write_text('{"chunks": {"0": {"rec')
    for attempt in (lambda: AttentionMapDataset(copy, None), lambda: _remake(flux, samples, copy)):
        with pytest.raises(DamagedFileError, match=r"progress.json is damaged .*--restart"):
            attempt()
    assert len(_remake(flux, samples, copy, restart=True)) == 4
    assert _fingerprint(copy) == _fingerprint(reference)

    (copy / "dataset.json").write_bytes(b"\x00garbage")
    with pytest.raises(DamagedFileError, match=r"dataset.json is damaged .*delete it and rerun"):
        _remake(flux, samples, copy)
    (copy / "dataset.json").unlink()  # the recovery the message names: it is written again ...
    assert _remake(flux, samples, copy) == []  # ... and every committed chunk is kept
    assert _fingerprint(copy) == _fingerprint(reference)
    # A dataset.json of other settings cannot sneak in beside the chunks it did not make.
    (copy / "dataset.json").unlink()
    with pytest.raises(L2SError, match="progress.json records chunks made with other settings"):
        _remake(flux, samples, copy, seed=8)


def test_make_data_refuses_a_folder_another_process_writes(flux, samples, tmp_path):
    hold = "import sys, time\nfrom l2s.files import output_lock\nwith output_lock(sys.argv[1]):\n" \
           "    print('held', flush=True); time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            _remake(flux, samples, tmp_path / "data")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".l2s.lock"]  # nothing written


def _pairs(tmp_path: Path, images: Path) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "img0.png", "prompt": "a cat above a dog"}) + "\n")
    return pairs


@pytest.mark.parametrize("options, message", [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--size", "0"], "--size must be a positive integer, got 0"),
    (["--shard-size", "0"], "--shard-size must be a positive integer"),
    (["--limit", "0"], "--limit must be a positive integer"),
    (["--max-per-class", "0"], "--max-per-class must be a positive integer"),
    (["--val-fraction", "1"], "--val-fraction must be a number in [0, 1)"),
    (["--min-psnr", "nan"], "--min-psnr must be a finite number"),
    (["--gamma", "-1"], "--gamma must be in [0, 1] (an RF-Inversion controller strength), got -1.0"),
    (["--eta", "1.5"], "--eta must be in [0, 1]"),
    (["--store-steps", "-1"], "--store-steps must be step indices"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**64), got -1"),
    (["--max-iou", "2"], "--max-iou must be in [0, 1]"),
    (["--annotations", "/nonexistent/pairs.jsonl"], "--annotations /nonexistent/pairs.jsonl: no such file"),
    (["--images", "/nonexistent/images"], "--images /nonexistent/images: no such folder"),
    (["--device", "bogus"], "device 'bogus' is not a torch device"),
    (["--device", "cuda:7"] if torch.cuda.device_count() < 8 else ["--device", "cuda:99"], "device 'cuda:"),
])
def test_make_data_options_are_checked_before_any_work(options, message, samples, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_training, "_load_pipe", lambda *a: pytest.fail("loaded a model"))
    pairs = _pairs(tmp_path, samples[0].image.parent)
    code = make_data_main(["--source", "pairs", "--annotations", str(pairs), "--images",
                           str(samples[0].image.parent), "--out", str(tmp_path / "out"), "--quiet"] + options)
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("l2s: error:")]
    assert message in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, message", [
    (dict(store_steps=[0.5]), r"store_steps must be step indices \(integers >= 0\), got \[0.5\]"),
    (dict(class_names="above"), "class_names must be a list of relation names, got 'above'"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64\), got -1"),
    (dict(dual="no"), "dual must be True or False, got 'no'"),
    (dict(val_fraction="0.1"), r"val_fraction must be a number in \[0, 1\), got '0.1'"),
])
def test_make_dataset_refuses_what_it_would_store_wrongly(option, message, samples, tmp_path):
    from l2s.training import make_dataset

    with pytest.raises(L2SError, match=message):      # before the model is even looked at
        make_dataset(samples, None, tmp_path / "out", **{**MAKE, **option})
    assert not (tmp_path / "out").exists()


def test_make_dataset_refuses_samples_and_folders_of_another_type(flux, samples, tmp_path):
    from l2s.training import make_dataset

    for given, message in (([{"key": "a"}], "sample 0 is a dict, not an l2s.training.RelationSample"),
                           (None, "samples must be RelationSample items")):
        with pytest.raises(L2SError, match=message):
            make_dataset(given, flux, tmp_path / "out", **MAKE)
    with pytest.raises(L2SError, match="out_dir must be a folder path, got None"):
        make_dataset(samples, flux, None, **MAKE)
    assert not (tmp_path / "out").exists()


def test_make_data_where_every_sample_is_skipped_is_an_error(samples, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "img0.png").write_text("not a picture")   # there, so not refused before inverting
    pairs = _pairs(tmp_path, tmp_path / "empty")
    code = make_data_main(["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images",
                           str(tmp_path / "empty"), "--steps", "4", "--store-steps", "1", "3", "--size", "32",
                           "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == ("l2s: error: no sample gave a record (every one was skipped: "
                                            f"see the lines above), so {tmp_path / 'out'} keeps no dataset")


def test_make_data_out_must_be_a_writable_folder_and_restart_starts_over(samples, tmp_path, capsys):
    images = samples[0].image.parent
    pairs = _pairs(tmp_path, images)
    base = ["--model", "tiny", "--source", "pairs", "--annotations", str(pairs), "--images", str(images),
            "--steps", "4", "--store-steps", "1", "3", "--size", "32", "--quiet", "--out"]
    (tmp_path / "file").write_text("x")
    assert make_data_main(base + [str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert make_data_main(base + [str(tmp_path / "odd"), "--size", "31"]) == 2  # a token is 2x2 pixels
    assert "size must be a multiple of 2 pixels for this model, got 31" in capsys.readouterr().err
    assert make_data_main(base + [str(tmp_path / "odd"), "--size", "100000"]) == 2  # used to exhaust memory
    assert "50000x50000 attention maps; at most 256x256 (512 px)" in capsys.readouterr().err
    out = tmp_path / "data"
    assert make_data_main(base + [str(out)]) == 0
    first = _fingerprint(out)
    (out / "progress.json").write_text("{")
    assert make_data_main(base + [str(out)]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("l2s: error:")]
    assert "progress.json is damaged" in line and "--restart" in line
    assert make_data_main(base + [str(out), "--restart"]) == 0
    assert _fingerprint(out) == first


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

CHANNELS = 4


def _synthetic(tmp_path: Path, poison: bool = False, poison_at: int = 3) -> Path:
    g = torch.Generator().manual_seed(0)
    n = 24
    maps = torch.rand(n, 2, CHANNELS, 16, 16, generator=g)
    if poison:
        maps[poison_at, 0, 0, 0, 0] = float("nan")
    records = [{"label": PUBLISHED_CLASSES[i % 5], "timestep": (1, 3)[i % 2], "split": "val" if i >= 18 else "train",
                "sample_id": f"s{i}"} for i in range(n)]
    return write_map_dataset(tmp_path / ("poisoned" if poison else "data"), records, maps,
                             class_names=PUBLISHED_CLASSES, num_steps=4, shard_size=8)


def _config() -> ClassifierConfig:
    return ClassifierConfig(channels=CHANNELS, timesteps=(1, 3), num_timesteps=4, d_model=16, pe_length=CHANNELS,
                            extractor_layers=1, extractor_heads=2, extractor_ff=32, pool_heads=2, head_layers=1,
                            head_heads=2, head_ff=32, fc_dims=(16, 8), dropout=0.0, model_family="custom")


def test_training_that_diverges_stops_at_once_naming_the_epoch(tmp_path):
    data = _synthetic(tmp_path)
    kwargs = dict(batch_size=8, seed=0, progress=False)
    with pytest.raises(TrainingDivergedError, match=r"training diverged in epoch 1: the training loss is nan"):
        train_classifier(data, tmp_path / "run", _config(), epochs=3, lr=1e12, **kwargs)
    assert not (tmp_path / "run" / "last").exists() and not (tmp_path / "run" / "best").exists()
    # After good epochs, a divergence keeps them: last/ stays at the epoch before.
    good = train_classifier(data, tmp_path / "good", _config(), epochs=2, lr=1e-3, **kwargs)
    assert good.epochs_run == 2 and math.isfinite(good.best_val_loss)
    with pytest.raises(TrainingDivergedError, match="non-finite maps"):
        train_classifier(_synthetic(tmp_path, poison=True), tmp_path / "poisoned-run", _config(), epochs=1,
                         lr=1e-3, **kwargs)
    # A NaN map among the validation records (18-23) blames the data too, not the learning rate.
    (tmp_path / "poisoned").rename(tmp_path / "poisoned-train")
    with pytest.raises(TrainingDivergedError, match="non-finite maps .the validation loss is nan"):
        train_classifier(_synthetic(tmp_path, poison=True, poison_at=20), tmp_path / "poisoned-val-run", _config(),
                         epochs=1, lr=1e-3, **kwargs)


def test_train_cli_lr_1e12_is_one_error_line(tmp_path, capsys):
    data = _synthetic(tmp_path)
    code = train_main([str(data), "--out", str(tmp_path / "run"), "--preset", "flux-schnell", "--epochs", "2",
                       "--batch-size", "8", "--lr", "1e12", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("l2s:")]
    assert "diverged in epoch 1" in line and "lower the learning rate (--lr)" in line
    assert "Traceback" not in err


@pytest.mark.parametrize("options, message", [
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "nan"], "--lr must be a positive finite number"),
    (["--lr", "inf"], "--lr must be a positive finite number"),
    (["--seed", str(2 ** 64)], "--seed must be an integer in [0, 2**64)"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**64)"),
    (["--workers", "-1"], "--workers must be an integer >= 0"),
    (["--device", "bogus"], "is not a torch device"),
    (["--preset", ""], "unknown classifier --preset '' (presets: flux-dev, flux-schnell, sd14, sd21)"),
    (["--preset", "bogus"], "unknown classifier --preset 'bogus' (presets: flux-dev,"),
    (["--layers", "0"], "--layers must be an integer >= 1, got 0"),
])
def test_train_options_are_checked_before_any_work(options, message, tmp_path, capsys):
    data = _synthetic(tmp_path)
    code = train_main([str(data), "--out", str(tmp_path / "run"), "--quiet"] + options)
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("l2s: error:")]
    assert message in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, message", [
    (dict(config="bogus"), "unknown classifier preset 'bogus'"),
    (dict(config=None), "config must be a ClassifierConfig or a preset name, got NoneType"),
    (dict(layers=1.5), "layers must be an integer >= 1, got 1.5"),
    (dict(resume="no"), "resume must be True or False, got 'no'"),
    (dict(prompt_types="pos"), "prompt_types must be a list of pos and neg, got 'pos'"),
    (dict(prompt_types=("pos", "bogus")), "prompt_types must be a list of pos and neg"),
    (dict(out_dir=None), "out_dir must be a folder path, got None"),
])
def test_train_classifier_refuses_what_it_would_misread(option, message, tmp_path):
    from l2s.training import train_classifier

    data = _synthetic(tmp_path)
    with pytest.raises(L2SError, match=message):
        train_classifier(data, **{"out_dir": tmp_path / "run", "config": "flux-schnell", "epochs": 1, **option})
    assert not (tmp_path / "run").exists()


def test_a_preset_takes_the_step_indices_the_dataset_stored(tmp_path):
    from l2s.training.train import _resolve_config

    meta = {"channels": CHANNELS, "class_names": ["above", "below"], "map_size": 16, "store_steps": [0, 1],
            "num_steps": 2}
    config = _resolve_config("flux-dev", meta)
    assert config.timesteps == (0, 1) and config.num_timesteps == 2      # not dev's published (5, ..., 49) of 50


def test_damaged_training_state_says_how_to_recover(tmp_path, capsys):
    data = _synthetic(tmp_path)
    run = tmp_path / "run"
    argv = [str(data), "--out", str(run), "--preset", "flux-schnell", "--batch-size", "8", "--quiet"]
    assert train_main(argv + ["--epochs", "1"]) == 0
    capsys.readouterr()
    state = run / "last" / "state.pt"
    state.write_bytes(state.read_bytes()[:200])
    assert train_main(argv + ["--epochs", "2"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("l2s: error:")]
    assert "state.pt is damaged" in line and "--restart" in line
    assert train_main(argv + ["--epochs", "1", "--restart"]) == 0
    capsys.readouterr()
    weights = run / "last" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(DamagedFileError, match=r"resume state in .*last is damaged .*--restart"):
        train_classifier(data, run, "flux-schnell", epochs=2, batch_size=8, progress=False)
    assert train_main(argv + ["--epochs", "1", "--restart"]) == 0
    log = run / "log.jsonl"
    log.write_text("not json\n" + log.read_text())
    with pytest.raises(DamagedFileError, match=r"log.jsonl line 1 is damaged"):
        train_classifier(data, run, "flux-schnell", epochs=2, batch_size=8, progress=False)
