"""bench/shapes_overhead.py: each schedule against unsteered images at its own step count, forwards
per image as a mean, and bad options (a count, a CUDA-graph mode, a --json that cannot be written, a
classifier that does not load) refused in one line."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import l2s.shapes

from .scripts import loaded_script


@pytest.fixture(scope="module")
def script():
    yield from loaded_script("shapes_overhead.py")


class RecordingSteerer:
    """Stands in for the shapes steerer (12 default steps, the FLUX.1-dev rule): records each call;
    seed 0 takes 3 steering evaluations, seed 1 takes 2."""

    family = "flux-dev"

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def default_steps(self) -> int:
        return 12

    def __call__(self, prompt, seed, progress, **call):
        self.calls.append(call)
        evaluations = 0 if call.get("steer") is False else (3 if seed == 0 else 2)
        return SimpleNamespace(diagnostics=SimpleNamespace(records=[None] * evaluations))


def test_each_schedule_is_compared_with_unsteered_images_of_its_own_steps(script, monkeypatch):
    steerer = RecordingSteerer()
    monkeypatch.setattr(l2s.shapes, "load_shapes_steerer", lambda classifier=None: SimpleNamespace(pipe=None,
                                                                                                  classifier=None))
    monkeypatch.setattr(l2s.shapes, "steer_shapes_pipeline", lambda pipe, classifier, mode: steerer)
    args = script.parse_args(["--images", "2", "--schedules", "fast", "reference", "early-exit"])
    rows = list(script.measure_mode("fast", args))
    assert [(r["schedule"], r["steps"]) for r in rows] == [("fast", 7), ("reference", 12), ("early-exit", 12)]
    assert all(r["steering_forwards"] == 2.5 for r in rows)           # (3 + 2) / 2, not 5 // 2
    timed = steerer.calls[1:]                                          # after the warm-up
    unsteered = [c["num_inference_steps"] for c in timed if c.get("steer") is False]
    steered = [(c["schedule"], c["num_inference_steps"]) for c in timed if "schedule" in c]
    assert unsteered == [7, 7, 12, 12]                                 # once per step count, 2 images each
    assert steered == [("fast", 7)] * 2 + [("reference", 12)] * 2 + [("early-exit", 12)] * 2


@pytest.mark.parametrize("options", [["--images", "0"], ["--images", "-3"], ["--threads", "0"]])
def test_a_bad_count_is_refused_in_one_line(script, capsys, options):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(options)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert options[0] in line and "must be positive" in line


def test_a_prefix_of_an_option_is_refused_not_taken_for_it(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--image", "2"])                     # not --images
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python bench/shapes_overhead.py: error: unrecognized arguments: --image 2")


def test_a_cuda_graph_mode_is_refused_in_one_line(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--modes", "fast", "fast+cudagraphs"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--modes" in line and "fast+cudagraphs" in line


def test_every_mode_a_cpu_runs_is_offered(script):
    from l2s.steer import CPU_MODES, MODES

    assert set(CPU_MODES) == set(MODES) - {"fast+cudagraphs"}     # the library's list, not a copy of its rule
    assert script.parse_args(["--modes", *CPU_MODES]).modes == list(CPU_MODES)


def test_an_unwritable_json_is_refused_before_a_model_loads(script, capsys, monkeypatch, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(l2s.shapes, "load_shapes_steerer", no_model)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert script.main(["--json", str(blocked / "rows.json")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python bench/shapes_overhead.py: error: --json")


def test_a_classifier_that_does_not_load_is_one_line(script, capsys, tmp_path):
    assert script.main(["--classifier", str(tmp_path / "missing"), "--images", "1", "--schedules", "fast"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "classifier not found" in line
