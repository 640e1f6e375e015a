"""The API's arguments checked before any work (the CLI's messages), and reports that say what ran."""
import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from l2s.demo import tiny_classifier_for, tiny_flux_pipeline, tiny_sd_pipeline
from l2s.errors import L2SError, UsageError
from l2s.pipelines import wrap_pipeline

PROMPT = "a cat above a dog"


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline(seed=0)


@pytest.fixture(scope="module")
def flux(pipe):
    return wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_images=0), "num_images must be a positive integer, got 0"),
    (dict(seed="1"), "seed must be an integer in [0, 2**64), got '1'"),
    (dict(seed=2 ** 64), "seed must be an integer in [0, 2**64)"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(seed=np.int64(3)), "seed must be an integer in [0, 2**64), got np.int64(3) (int64: pass int(...))"),
    (dict(guidance_scale=np.float32(3.0)), "(float32: pass float(...))"),
    (dict(num_inference_steps="4"), "num_inference_steps must be a positive integer, got '4'"),
    (dict(num_inference_steps=0), "num_inference_steps must be a positive integer, got 0"),
    (dict(height=0), "height must be a positive integer, got 0"),
    (dict(width=-32), "width must be a positive integer, got -32"),
    (dict(height=100000), "height must be at most 4096 pixels, got 100000"),
    (dict(num_inference_steps=10 ** 8), "num_inference_steps must be at most 1000, got 100000000"),
    (dict(guidance_scale="high"), "guidance_scale must be a finite number, got 'high'"),
    (dict(guidance_scale=math.nan), "guidance_scale must be a finite number"),
    (dict(guidance_scale=-1.0), r"guidance_scale must be 0 or more, got -1.0"),
    (dict(steer="yes"), "steer must be True or False"),
    (dict(schedule=3), "schedule must be a preset name or an l2s.steer.Schedule"),
    (dict(latents=torch.zeros(1, 5, 4)), "latents have shape (1, 5, 4); this call needs (1, 256, 4)"),
    (dict(latents=torch.zeros(2, 256, 4)), "this call needs (1, 256, 4)"),
    (dict(latents=np.zeros((1, 256, 4))), "latents must be a floating-point torch.Tensor"),
    (dict(latents=torch.full((1, 256, 4), math.nan)), "latents contain non-finite values (NaN or inf)"),
])
def test_bad_arguments_are_refused_before_any_work(flux, kwargs, message, monkeypatch):
    monkeypatch.setattr(flux, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(UsageError) as raised:
        flux(PROMPT, progress=False, **kwargs)
    assert message in str(raised.value)


def test_native_capture_without_its_kernels_is_refused_before_any_work(pipe, monkeypatch):
    import sys

    steerer = wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=1), capture_backend="native")
    monkeypatch.setattr(steerer, "generate", lambda *a, **k: pytest.fail("generated"))
    monkeypatch.setitem(sys.modules, "l2s_fast", None)      # as if it were never built
    with pytest.raises(UsageError, match="needs the native module l2s_fast"):
        steerer(PROMPT, progress=False)
    with pytest.raises(UsageError, match="needs the native module l2s_fast"):
        steerer.check_arguments(PROMPT)
    steerer.check_arguments(PROMPT, steer=False)      # no steered pass: nothing to refuse


def test_the_messages_are_the_cli_s(flux):
    from argparse import Namespace

    from l2s.cli.checks import check_sampling_args

    for option, argument, value in (("steps", "num_inference_steps", 0), ("height", "height", 0)):
        with pytest.raises(UsageError) as cli:
            check_sampling_args(Namespace(**{option: value}))
        with pytest.raises(UsageError) as api:
            flux(PROMPT, progress=False, **{argument: value})
        assert str(cli.value).replace(f"--{option}", argument) == str(api.value)


@pytest.mark.parametrize("classifier, shown", [(None, "None"), ("/models/l2s-flux-dev", "'/models/l2s-flux-dev'"),
                                               (object(), "object")])
def test_wrap_pipeline_needs_a_classifier_object(pipe, classifier, shown):
    with pytest.raises(L2SError, match=f"classifier must be a RelationClassifier, got {shown}; load one with"):
        wrap_pipeline(pipe, classifier)


def test_latents_of_the_right_shape_are_used(flux):
    noise = torch.randn(2, 256, 4, generator=torch.Generator().manual_seed(3))
    kwargs = dict(num_inference_steps=1, steer=False, progress=False, num_images=2)
    first, again = flux(PROMPT, latents=noise, **kwargs), flux(PROMPT, latents=noise.clone(), seed=9, **kwargs)
    assert first.images[0].tobytes() == again.images[0].tobytes()    # the latents, not the seed, decide
    sd = tiny_sd_pipeline(seed=0)
    with pytest.raises(UsageError, match=r"this call needs \(1, 4, 32, 32\)"):
        wrap_pipeline(sd, tiny_classifier_for(sd, seed=0))(PROMPT, latents=torch.zeros(1, 4, 8, 8), progress=False)


def _unsteered_bytes(steerer):
    return steerer(PROMPT, num_inference_steps=2, steer=False, progress=False).images[0].tobytes()


def test_a_step_size_that_blows_up_leaves_the_image_unsteered_and_says_so(pipe):
    steerer = wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=1), step_size=1e30)
    result = steerer(PROMPT, num_inference_steps=2, progress=False)
    report = result.report()
    assert report["steered"] is False and "every steering update was rejected" in report["steered_reason"]
    assert report["non_finite_events"] >= 1 and report["steering_updates"] == 0
    assert result.images[0].tobytes() == _unsteered_bytes(steerer)   # the update was undone, not kept


def test_a_classifier_with_nan_weights_does_not_steer_and_says_so(pipe):
    classifier = tiny_classifier_for(pipe, seed=1)
    with torch.no_grad():
        classifier.relation_classifier.fc[-1].weight.fill_(math.nan)
    steerer = wrap_pipeline(pipe, classifier)
    result = steerer(PROMPT, num_inference_steps=2, progress=False)
    assert not result.outcome.steered and result.report()["steered"] is False
    assert "non-finite" in result.outcome.warning()
    assert result.images[0].tobytes() == _unsteered_bytes(steerer)


def test_steer_false_is_reported_as_not_steered(flux):
    report = flux(PROMPT, num_inference_steps=1, steer=False, progress=False).report()
    assert report["steered"] is False and report["steered_reason"] == "steering disabled (steer=False)"
    assert report["note"] == "not steered: steering disabled (steer=False)"


def test_maps_of_another_grid_are_resampled_with_one_warning(pipe, caplog):
    from l2s.classifier import RelationClassifier

    config = dataclasses.replace(tiny_classifier_for(pipe).config, orig_map_size=8, map_size=8)
    steerer = wrap_pipeline(pipe, RelationClassifier(config).eval())
    kwargs = dict(num_inference_steps=1, schedule="front-loaded", progress=False)
    with caplog.at_level(logging.WARNING, logger="l2s"):
        own = steerer(PROMPT, **kwargs)        # default size: the classifier's own 8x8 grid (16 px)
        assert not caplog.records
        steerer(PROMPT, height=32, width=32, **kwargs)
        again = steerer(PROMPT, height=32, width=32, seed=1, **kwargs)
    (record,) = caplog.records                 # said once per pipeline
    line = ("the classifier was trained on maps of a 8x8 token grid, but this model at 32x32 px gives "
            "16x16: its maps are resampled to the classifier's 8x8 input (steering may be weaker)")
    assert record.getMessage() == "warning: " + line
    assert own.report()["warnings"] == [] and again.report()["warnings"] == [line]   # every report says it
    unsteered = steerer(PROMPT, height=32, width=32, steer=False, num_inference_steps=1, progress=False)
    assert unsteered.report()["warnings"] == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="l2s"), pytest.raises(UsageError, match="multiples of"):
        steerer(PROMPT, height=33, width=32, **kwargs)   # a size the model refuses: its error, no warning first
    assert not caplog.records


def test_doubtful_token_mapping_is_logged_when_steering(flux, caplog):
    with caplog.at_level(logging.WARNING, logger="l2s"):
        flux("a red circle left of a red circle", num_inference_steps=1, steer=False, progress=False)
        assert not caplog.records              # nothing is steered: nothing to doubt
        result = flux("a red circle left of a red circle", num_inference_steps=1, schedule="front-loaded",
                      progress=False)
    (record,) = caplog.records
    assert "'red circle' occurs 2 times" in record.getMessage()
    assert result.plan.pairs == [(0, 1)] and result.report()["warnings"] == [record.getMessage()[len("warning: "):]]


def test_say_once_says_each_line_once_and_keeps_a_bounded_memory(caplog, monkeypatch):
    import l2s.pipelines.arguments as arguments

    monkeypatch.setattr(arguments, "SAID_LINES_KEPT", 3)
    owner = type("Pipe", (), {})()
    with caplog.at_level("WARNING", logger="l2s"):
        arguments.say_once(owner, ["a", None, "a", "b"])
        arguments.say_once(owner, ["c", "d", "b"])     # "a" is forgotten once "d" comes
        arguments.say_once(owner, ["a"])
    assert [r.getMessage() for r in caplog.records] == [f"warning: {x}" for x in "abcda"]
    assert len(owner._l2s_warned) == 3


def test_say_once_is_said_by_each_machines_first_process_only(caplog, monkeypatch):
    import l2s.pipelines.arguments as arguments

    owner = type("Pipe", (), {})()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")   # launchers set it beside WORLD_SIZE
    monkeypatch.setenv("LOCAL_RANK", "1")
    with caplog.at_level("WARNING", logger="l2s"):
        arguments.say_once(owner, ["a"])
    assert not caplog.records and "a" in owner._l2s_warned
    monkeypatch.setenv("LOCAL_RANK", "0")
    with caplog.at_level("WARNING", logger="l2s"):
        arguments.say_once(type("Pipe", (), {})(), ["a"])
    assert [r.getMessage() for r in caplog.records] == ["warning: a"]


def test_a_call_s_own_warnings_are_made_once_per_call_not_per_prompt(flux, monkeypatch):
    # They depend on the call (model, classifier, size), not on its prompts: a batch of three makes them once.
    import l2s.pipelines.arguments as arguments

    made = []
    real = arguments.map_grid_warning
    monkeypatch.setattr(arguments, "map_grid_warning", lambda *args: made.append(args) or real(*args))
    flux([PROMPT, "a dog above a cat", "a cat left of a dog"], num_inference_steps=1, schedule="front-loaded",
         progress=False)
    assert len(made) == 1
