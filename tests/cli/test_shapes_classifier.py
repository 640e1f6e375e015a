"""``l2s shapes make-data`` / ``train-classifier``: what their lines say and which datasets they take."""
from __future__ import annotations

import json
import re

import pytest
import torch

from l2s.cli import main
from l2s.cli.shapes_classifier import train_classifier_main
from l2s.relations import PUBLISHED_CLASSES
from l2s.training import write_map_dataset

LAYOUT = [["transformer_blocks.0.attn", 4, [8, 8]], ["single_transformer_blocks.0.attn", 4, [8, 8]]]


def _dataset(folder, extra: dict | None = None):
    """A small map dataset in the shapes world's format (steps 1, 3, 5 of 12)."""
    records = [{"label": PUBLISHED_CLASSES[i % 5], "timestep": (1, 3, 5)[i % 3],
                "split": "val" if i % 4 == 0 else "train"} for i in range(30)]
    return write_map_dataset(folder, records, torch.rand(30, 2, 8, 8, 8, generator=torch.Generator().manual_seed(0)),
                             class_names=PUBLISHED_CLASSES, num_steps=12, store_steps=(1, 3, 5),
                             layer_layout=LAYOUT, model_family="flux-schnell", extra=extra)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("shapes") / "data", {"model": "shapes-world"})


def test_a_dataset_of_another_make_data_is_refused_with_the_command_that_trains_it(tmp_path, capsys):
    data = _dataset(tmp_path / "tiny-maps", {"model": "tiny"})    # 'l2s make-data --model tiny' records this
    assert main(["shapes", "train-classifier", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"l2s: error: {data} was made by 'l2s make-data' with the model 'tiny', not by "
                                       f"'l2s shapes make-data': train its classifier with 'l2s train {data} --out DIR'\n")
    assert not (tmp_path / "run").exists()


def test_l2s_train_refuses_a_shapes_dataset_with_the_command_that_trains_it(shapes_data, tmp_path, capsys):
    """It once trained a preset's large classifier on the shapes world's maps without a word."""
    assert main(["train", str(shapes_data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"l2s: error: {shapes_data} was made by 'l2s shapes make-data', not by 'l2s "
                                       f"make-data': train its classifier with 'l2s shapes train-classifier --data "
                                       f"{shapes_data} --out DIR'\n")
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_says_so_before_its_first_epoch_even_quiet(shapes_data, tmp_path, capsys, monkeypatch):
    from tests.training.test_train import said_before_the_first_epoch

    argv = ["--data", str(shapes_data), "--out", str(tmp_path / "run"), "--quiet", "--epochs"]
    assert train_classifier_main(argv + ["1"]) == 0 and "resumed after" not in capsys.readouterr().err
    said = said_before_the_first_epoch(lambda: train_classifier_main(argv + ["2"]), "err", capsys, monkeypatch)
    assert said == f"l2s: resumed after epoch 1 of the earlier run in {tmp_path / 'run'}\n"
    end = capsys.readouterr().err
    assert "resumed after" not in end and end.startswith("l2s: best epoch ")   # the summary stays; said once


def test_the_best_epoch_line_and_card_say_what_best_means_and_count_records(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_classifier_main(["--data", str(shapes_data), "--out", str(out), "--epochs", "3", "--quiet"]) == 0
    said = capsys.readouterr()
    printed = said.err   # l2s's lines go to stderr, as 'l2s train' says the same sentence
    assert said.out == ""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda row: row["val_loss"])
    # "best" is chosen by the lowest val loss (another epoch may have a higher accuracy): the line says so.
    assert re.search(rf"^l2s: best epoch {best['epoch']} of 3 epochs run \(lowest val loss {best['val_loss']:.4f}\): "
                     rf"val accuracy {best['val_accuracy']:.3f}; weights in {out / 'best'}$", printed,
                     re.MULTILINE), printed
    assert printed.splitlines()[-1] == f"l2s: training curves in {out / 'curves.png'}"
    assert (out / "curves.png").is_file()
    card = (out / "best" / "README.md").read_text()
    training = json.loads((out / "best" / "training.json").read_text())
    assert f"({training['train_samples']} training, {training['val_samples']} validation records)" in card
    assert f"(the lowest validation loss: {best['val_loss']:.4f})" in card and "samples" not in card
    # sized from the schnell preset, but its maps are the shapes world's: the card names that model, not schnell
    assert "# l2s relation classifier (shapes-world)" in card and "flux-schnell" not in card


def test_make_data_resumes_with_the_datasets_own_shard_size_unless_told_another(tmp_path, monkeypatch, capsys):
    import l2s.shapes
    from l2s.errors import L2SError

    sizes = []

    def record(pipe, out, scenes, seed, **kwargs):
        sizes.append(kwargs["shard_size"])
        raise L2SError("stopped by the test")
    monkeypatch.setattr(l2s.shapes, "load_shapes_pipeline", lambda model: "pipe")
    monkeypatch.setattr(l2s.shapes, "make_shapes_data", record)
    made = _dataset(tmp_path / "maps", {"model": "shapes-world", "shard_size": 8})   # made with --shard-size 8
    for flags in ([], ["--shard-size", "4"], ["--restart"]):
        main(["shapes", "make-data", "--out", str(made), "--scenes", "16", *flags])
    main(["shapes", "make-data", "--out", str(tmp_path / "new"), "--scenes", "16"])
    assert sizes == [8, 4, 256, 256]   # another explicit size is the writer's to refuse


def test_make_data_says_its_summary_on_stderr_as_l2s_make_data_does(tmp_path, monkeypatch, capsys):
    import l2s.shapes
    from l2s.training.dataset import DatasetSummary

    summary = DatasetSummary(tmp_path / "maps", records=6, samples_done=2, skipped=0, split_records={"train": 6})
    monkeypatch.setattr(l2s.shapes, "load_shapes_pipeline", lambda model: "pipe")
    monkeypatch.setattr(l2s.shapes, "make_shapes_data", lambda *args, **kwargs: summary)
    assert main(["shapes", "make-data", "--out", str(tmp_path / "maps"), "--scenes", "2"]) == 0
    said = capsys.readouterr()
    assert said.out == "" and said.err.splitlines()[0] == summary.line()   # then the empty val split's warning


def test_make_data_help_says_scenes_give_more_samples(capsys):
    from l2s.cli.shapes_classifier import build_make_data_parser

    help_text = " ".join(build_make_data_parser().format_help().split())
    assert "about one in 4 also gives a neutral 'is' sample" in help_text
    assert "so the dataset has more samples than scenes" in help_text


def test_make_data_draws_its_preview_and_says_its_psnr_and_files(tmp_path, capsys):
    """The shipped model on 3 scenes: the summary ends with the records' reconstruction PSNR, the
    last line lists the files, the preview among them; a rerun (resume) draws the same picture."""
    out = tmp_path / "maps"
    argv = ["shapes", "make-data", "--out", str(out), "--scenes", "3", "--shard-size", "2", "--threads", "1",
            "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    psnr = [json.loads(line)["psnr"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert err[0].endswith(f"; reconstruction PSNR mean {sum(psnr) / len(psnr):.1f} dB, min {min(psnr):.1f} dB")
    assert re.fullmatch(rf"l2s: wrote dataset\.json, manifest\.jsonl, preview\.png, progress\.json, skipped\.jsonl "
                        rf"and shards/: 2 files in {re.escape(str(out))}", err[-1])
    drawn = (out / "preview.png").read_bytes()
    assert main(argv) == 0 and (out / "preview.png").read_bytes() == drawn
