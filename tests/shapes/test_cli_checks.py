"""The shapes commands refuse numbers that cannot work in one line, before any scene is rendered."""
from __future__ import annotations

import pytest

from l2s.cli import main


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("l2s: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("options, message", [
    (["--objects", "4-2"], "argument --objects: '4-2': LOW-HIGH needs 1 <= LOW <= HIGH"),
    (["--objects", "0-9"], "argument --objects: '0-9': LOW-HIGH needs 1 <= LOW <= HIGH"),
    (["--object-sizes", "a-b"], "argument --object-sizes: 'a-b' is not LOW-HIGH"),
    (["--objects", "2-"], "argument --objects: '2-' is not LOW-HIGH"),
    (["--steps", "0"], "--steps 0 exports the --init-from pipeline without training: give --init-from, or steps"),
    (["--steps", "-1"], "--steps must be 0 or more, got -1"),
    (["--scenes", "-3"], "--scenes must be a positive integer, got -3"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--ema-decay", "1.5"], "--ema-decay must be between 0 and 1, got 1.5"),
    (["--double-layers", "-1"], "--double-layers must be 0 or more, got -1"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**64), got -1"),
    (["--double-layers", "0", "--single-layers", "0"], "leave the model without a block"),
    (["--time-limit", "0"], "--time-limit must be a positive number of minutes, got 0.0"),
    (["--time-limit", "-1"], "--time-limit must be a positive number of minutes, got -1.0"),
    (["--threads", "100000"], "--threads: expected a whole number from 1 to 1024, got 100000"),
])
def test_train_model_refuses_numbers_that_cannot_train(options, message, tmp_path, capsys, monkeypatch):
    import l2s.shapes

    monkeypatch.setattr(l2s.shapes, "train", lambda *a, **k: pytest.fail("started training"))
    argv = ["shapes", "train-model", "--out", str(tmp_path / "run"), "--preset", "tiny", "--no-progress", *options]
    try:
        code = main(argv)
    except SystemExit as exit_:          # argparse's own refusals
        code = exit_.code
    assert code == 2 and message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--layers", "0"], "--layers must be an integer >= 1, got 0"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
])
def test_train_classifier_names_the_flag_of_a_number_that_cannot_train(options, message, tmp_path, capsys):
    code = main(["shapes", "train-classifier", "--data", str(tmp_path), "--out", str(tmp_path / "c"), *options])
    assert code == 2 and _one_error_line(capsys.readouterr().err) == f"l2s: error: {message}"
    assert not (tmp_path / "c").exists()


def test_make_data_refuses_no_scenes(tmp_path, capsys, monkeypatch):
    import l2s.shapes

    monkeypatch.setattr(l2s.shapes, "load_shapes_pipeline", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["shapes", "make-data", "--out", str(tmp_path / "maps"), "--scenes", "0"]) == 2
    assert "--scenes must be a positive integer, got 0" in _one_error_line(capsys.readouterr().err)
    assert main(["shapes", "make-data", "--out", str(tmp_path / "maps"), "--seed", "-1"]) == 2
    assert "--seed must be an integer in [0, 2**64), got -1" in _one_error_line(capsys.readouterr().err)
    assert main(["shapes", "make-data", "--out", str(tmp_path / "maps"), "--shard-size", "0"]) == 2
    assert "--shard-size must be a positive integer, got 0" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "maps").exists()


def test_make_data_and_train_classifier_start_over_with_restart(tmp_path, monkeypatch, capsys):
    import l2s.shapes
    from l2s.errors import L2SError

    calls = {}

    def recorder(name):
        def record(*args, **kwargs):
            calls[name] = kwargs
            raise L2SError("stopped by the test")
        return record
    monkeypatch.setattr(l2s.shapes, "load_shapes_pipeline", lambda model: "pipe")
    monkeypatch.setattr(l2s.shapes, "make_shapes_data", recorder("make-data"))
    monkeypatch.setattr(l2s.shapes, "train_shapes_classifier", recorder("train-classifier"))
    for restart in (False, True):
        flag = ["--restart"] * restart
        assert main(["shapes", "make-data", "--out", str(tmp_path / f"m{restart}"), "--scenes", "2", *flag]) == 2
        assert main(["shapes", "train-classifier", "--data", str(tmp_path), "--out", str(tmp_path / f"c{restart}"),
                     *flag]) == 2
        assert calls["make-data"]["restart"] is restart and calls["train-classifier"]["resume"] is not restart
        assert calls["make-data"]["shard_size"] == 256     # the chunk the shipped classifiers' maps were made in
        assert capsys.readouterr().err.count("l2s: error: stopped by the test") == 2


def test_a_missing_classifier_fails_before_the_shapes_model_loads(tmp_path, monkeypatch):
    import l2s.shapes.model
    from l2s.errors import L2SError
    from l2s.shapes import load_shapes_steerer

    monkeypatch.setattr(l2s.shapes.model, "load_shapes_pipeline", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(L2SError, match="classifier not found"):
        load_shapes_steerer(classifier=tmp_path / "nope")


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty folder"])
def test_generate_and_bench_say_a_bad_classifier_in_one_wording(made, tmp_path, capsys, monkeypatch):
    import l2s.shapes.bench

    monkeypatch.setattr(l2s.shapes.bench, "load_shapes_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    classifier = tmp_path / "clf"
    if made:
        classifier.mkdir()
    lines = []
    for argv in (["generate", "a red circle left of a blue square", "--out", str(tmp_path / "g")],
                 ["shapes", "bench", "--out", str(tmp_path / "b"), "--parts", "position"]):
        assert main([*argv, "--classifier", str(classifier), "--quiet"]) == 2
        lines.append(_one_error_line(capsys.readouterr().err))
    assert lines[0] == lines[1], lines
