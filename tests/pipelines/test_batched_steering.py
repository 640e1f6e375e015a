"""Batched steering of different prompts, relations and seeds: each image as if steered alone."""
import dataclasses

import numpy as np
import pytest
import torch

from l2s.demo import tiny_classifier_for, tiny_flux_pipeline, tiny_sd_pipeline
from l2s.errors import UsageError
from l2s.pipelines import wrap_pipeline
from l2s.steer import BatchPlan, custom_schedule

PROMPTS = ["a cat to the left of a dog", "a red ball above a teddy bear",
           "a cat next to a dog",                                    # not steered: rides along unchanged
           "a dog below a cat and a ball to the right of the dog"]   # two relations, alternating
SEEDS = [3, 11, 5, 7]


def _sensitive(classifier, gain=3000.0):
    with torch.no_grad():
        classifier.object_extractor.input_projection.weight.mul_(gain)
    return classifier


@pytest.fixture(scope="module", params=["fast", "reference"])
def flux(request):
    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=2, seed=0)
    return wrap_pipeline(pipe, _sensitive(tiny_classifier_for(pipe, seed=1)), mode=request.param)


@pytest.fixture(scope="module")
def sd():
    pipe = tiny_sd_pipeline(seed=0)
    return wrap_pipeline(pipe, _sensitive(tiny_classifier_for(pipe, seed=1)), step_size=5.0)


def _exiting_schedule():
    # Loss targets that some images reach and others not: images exit at different iterations.
    schedule = custom_schedule(3, steered=[0, 1], iterations=4, step_size=1.0)
    return dataclasses.replace(schedule, loss_targets=(1.52, *schedule.loss_targets[1:]))


def _pixels(image):
    return np.asarray(image, dtype=np.float64)


def _check_same_as_alone(pipe, kwargs):
    batch = pipe(PROMPTS, seed=SEEDS, **kwargs)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        alone = pipe(prompt, seed=seed, **kwargs)
        assert np.abs(_pixels(batch.images[i]) - _pixels(alone.images[0])).max() <= 1, prompt
        mine, theirs = batch.reports()[i], alone.report()
        assert mine["steered"] == theirs["steered"] and mine["steering_updates"] == theirs["steering_updates"]
        assert mine["steps"].keys() == theirs["steps"].keys()
        for step, records in theirs["steps"].items():
            assert [r["iteration"] for r in mine["steps"][step]] == [r["iteration"] for r in records]
            assert [r["relation"] for r in mine["steps"][step]] == [r["relation"] for r in records]
            assert [r["updated"] for r in mine["steps"][step]] == [r["updated"] for r in records]
            np.testing.assert_allclose([r["target_probability"] for r in mine["steps"][step]],
                                       [r["target_probability"] for r in records], rtol=1e-4, atol=1e-6)
    return batch


def test_flux_batch_of_prompts_equals_each_image_alone(flux):
    kwargs = dict(num_inference_steps=3, height=32, width=32, schedule=_exiting_schedule(), progress=False)
    batch = _check_same_as_alone(flux, kwargs)
    reports = batch.reports()
    assert [r["steered"] for r in reports] == [True, True, False, True]
    assert reports[2]["steps"] == {} and reports[2]["schedule"] is None
    assert {r["relation"] for r in reports[3]["steps"]["0"]} == {0, 1}
    # the exits differ between images: some image ran fewer iterations at step 0 than another
    iterations = [len(r["steps"].get("0", [])) for r in reports if r["steered"]]
    assert len(set(iterations)) > 1, iterations
    assert batch.report() == {"images": reports}


def test_sd_batch_of_prompts_equals_each_image_alone(sd):
    kwargs = dict(num_inference_steps=3, height=64, width=64, schedule=_exiting_schedule(), progress=False)
    _check_same_as_alone(sd, kwargs)


def test_seed_list_of_one_prompt_equals_single_seed_calls(flux):
    kwargs = dict(num_inference_steps=2, height=32, width=32, schedule="reference", progress=False)
    batch = flux(PROMPTS[0], seed=[4, 9], **kwargs)
    for image, seed in zip(batch.images, [4, 9]):
        alone = flux(PROMPTS[0], seed=seed, **kwargs).images[0]
        assert np.abs(_pixels(image) - _pixels(alone)).max() <= 1


def test_batch_plan_merges_token_groups():
    flux_pipe = tiny_flux_pipeline(seed=0)
    pipe = wrap_pipeline(flux_pipe, tiny_classifier_for(flux_pipe, seed=1))
    plans = [pipe.plan(p) for p in PROMPTS]
    batch = BatchPlan(plans)
    assert batch.counts == [1, 1, 0, 2]
    for plan in plans:      # every plan's groups are in the merged list, each once
        assert all(group in batch.token_indices for group in plan.token_indices)
    assert len(set(batch.token_indices)) == len(batch.token_indices)
    pairs, classes = batch.rows((0, 0, 0, 1))   # the last image's second relation (its iteration 1)
    subject, obj = plans[3].pairs[1]
    assert pairs[3] == (batch.token_indices.index(plans[3].token_indices[subject]),
                        batch.token_indices.index(plans[3].token_indices[obj]))
    assert classes[3] == plans[3].class_indices[1] and pairs[2] == (0, 0)


@pytest.mark.parametrize("call, message", [
    (dict(prompt=["a cat left of a dog"], seed=[1, 2]), "1 prompts but 2 seeds"),
    (dict(prompt=[], seed=0), "must not be empty"),
    (dict(prompt=["a cat left of a dog", 3], seed=0), "list of strings"),
    (dict(prompt=["a cat left of a dog"], seed=[-1]), "seed must be"),
    (dict(prompt=["a cat left of a dog"], seed=0, num_images=2), "num_images must be 1"),
])
def test_bad_batches_are_refused_before_work(flux, call, message):
    with pytest.raises(UsageError, match=message):
        call = dict(call)
        flux(call.pop("prompt"), num_inference_steps=2, height=32, width=32, progress=False, **call)
