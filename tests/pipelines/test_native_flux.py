"""The diffusers-native FLUX steering pipeline against stock diffusers, on a tiny random FLUX."""
import contextlib
import threading

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.pipelines.loading import save_pipeline
from l2s.errors import PromptError, TokenizationError, UsageError
from l2s.pipelines.native import FluxRelationSteeringPipeline, custom_pipeline_file

SIZE = dict(height=32, width=32)
PROMPTS = ["a cat above a dog", "a dog to the left of a cat"]


def _generators(count, seed=0):
    return [torch.Generator().manual_seed(seed + k) for k in range(count)]


@pytest.fixture()
def stock():
    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def classifier(stock):
    classifier = tiny_classifier_for(stock, seed=1)
    with torch.no_grad():   # a random classifier reads maps of ~1/T per pixel: amplify them
        classifier.object_extractor.input_projection.weight.mul_(3000.0)
    return classifier


@pytest.fixture()
def pipe(stock, classifier):
    pipe = FluxRelationSteeringPipeline.from_pipe(stock, classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _state(pipe):
    """Everything a call must leave as it found it: requires_grad, training modes, processors."""
    modules = [pipe.transformer, pipe.classifier]
    return ([p.requires_grad for m in modules for p in m.parameters()],
            [m.training for m in pipe.classifier.modules()],
            list(pipe.transformer.attn_processors.values()))


def test_from_pipe_shares_the_modules_and_keeps_their_dtype(stock, classifier):
    stock.transformer.to(torch.bfloat16)
    pipe = FluxRelationSteeringPipeline.from_pipe(stock, classifier=classifier, steering_step_size=2.0)
    assert pipe.transformer is stock.transformer and pipe.vae is stock.vae and pipe.classifier is classifier
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    assert pipe.config.steering_step_size == 2.0 and pipe.steering_family() == "flux-schnell"
    with pytest.raises(TypeError, match="unexpected"):
        FluxRelationSteeringPipeline.from_pipe(stock, classifer=classifier)


def test_unsteered_output_equals_stock_flux(stock, pipe):
    kwargs = dict(num_inference_steps=2, num_images_per_prompt=2, output_type="np", **SIZE)
    expected = stock(PROMPTS, generator=_generators(4), **kwargs).images
    assert np.array_equal(pipe(PROMPTS, generator=_generators(4), steer=False, **kwargs).images, expected)
    # A prompt without a relation takes the steering path and steers nothing.
    expected = stock("a cat", generator=torch.Generator().manual_seed(3), **kwargs).images
    result = pipe("a cat", generator=torch.Generator().manual_seed(3), **kwargs)
    assert np.array_equal(result.images, expected) and not result.steering[0].steered
    assert result.steering[0].to_json()["steered_reason"] == "no spatial relation found: generating unsteered"
    # Per-call true CFG against a negative prompt, and a shorter T5 sequence, as stock does them.
    cfg = dict(negative_prompt="a blurry photo", true_cfg_scale=2.0, max_sequence_length=32,
               num_inference_steps=2, output_type="np", **SIZE)
    expected = stock("a cat above a dog", generator=torch.Generator().manual_seed(5), **cfg).images
    got = pipe("a cat above a dog", generator=torch.Generator().manual_seed(5), steer=False, **cfg).images
    assert np.array_equal(got, expected)


def test_diffusers_style_script_steers_with_offload_and_a_compiled_transformer(pipe):
    # The acceptance script: cpu offload hooks, a compiled transformer, a list of prompts, several
    # images per prompt, a generator per image, numpy output and a step-end callback.
    pipe.enable_model_cpu_offload(device="cpu")
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    seen = []

    def on_step_end(p, step, timestep, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        return tensors

    kwargs = dict(num_inference_steps=3, num_images_per_prompt=2, output_type="np", **SIZE)
    steered = pipe(PROMPTS, generator=_generators(4), callback_on_step_end=on_step_end, **kwargs)
    assert [step for step, _ in seen] == [0, 1, 2] and steered.images.shape == (4, 32, 32, 3)
    plain = pipe(PROMPTS, generator=_generators(4), steer=False, **kwargs)
    assert not np.array_equal(steered.images, plain.images)
    for steering in steered.steering:
        first, last = steering.diagnostics.for_step(0)[0], steering.diagnostics.for_step(0)[-1]
        assert all(b > a for a, b in zip(first.target_probability, last.target_probability))
        report = steering.to_json()
        assert report["steps"]["0"][0]["iteration"] == 0 and report["steered"] and report["steering_updates"] > 0
        assert report["last_target_probability"] == [steering.diagnostics.records[-1].target_probability]


def test_offload_hooked_on_a_compiled_transformer(pipe):
    # Compiled first, then offloaded: the hook sits on the wrapper, steering runs the module inside.
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    pipe.enable_model_cpu_offload(device="cpu")

    def moves_in(**call):
        """How often the offload hook moves the transformer during one call (the hooks are remade
        after every call, so each call gets a fresh spy)."""
        hook, moves = pipe.transformer._hf_hook, []
        move = hook.pre_forward
        hook.pre_forward = lambda module, *args, **kwargs: moves.append(module) or move(module, *args, **kwargs)
        result = pipe("a cat above a dog", num_inference_steps=2, output_type="np", **SIZE, **call)
        return result, len(moves)

    _, plain = moves_in(steer=False)
    result, steered = moves_in()
    # One more move to the execution device: before the steered step's passes (step 0).
    assert result.steering[0].outcome.steered and (plain, steered) == (2, 3)


def test_later_steps_are_steered_from_the_callback(pipe, classifier):
    from l2s.steer import custom_schedule

    schedule = custom_schedule(3, steered=[1, 2], iterations=2, step_size=1.0)
    result = pipe("a cat above a dog", generator=torch.Generator().manual_seed(0), num_inference_steps=3,
                  steering_schedule=schedule, output_type="latent", **SIZE)
    assert sorted({r.step for r in result.steering[0].diagnostics.records}) == [1, 2]
    assert result.images.shape == (1, 256, 4)     # packed latents, as FluxPipeline returns them


def test_the_users_modules_are_left_as_they_were(pipe):
    from peft import LoraConfig

    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"],
                                            init_lora_weights=False))
    pipe.classifier.train()
    before = _state(pipe)
    assert any(before[0]) and any(before[1])
    pipe("a cat above a dog", generator=torch.Generator().manual_seed(0), num_inference_steps=2, **SIZE)
    assert _state(pipe) == before

    def fail(*args):
        raise RuntimeError("stop")

    from l2s.steer import custom_schedule
    with pytest.raises(RuntimeError, match="stop"):
        pipe("a cat above a dog", num_inference_steps=2, callback_on_step_end=fail,
             steering_schedule=custom_schedule(2, steered=[1], iterations=1, step_size=1.0), **SIZE)
    assert _state(pipe) == before


def test_relations_given_skip_the_parser(pipe):
    prompt = "to the left of a cat there is a dog"
    with pytest.raises(PromptError):
        pipe(prompt, num_inference_steps=2, **SIZE)
    result = pipe(prompt, relations=[("dog", "left of", "cat")], num_inference_steps=2, output_type="np", **SIZE)
    plan = result.steering[0].plan
    assert plan.phrases == ["dog", "cat"] and plan.steered and result.steering[0].diagnostics.records
    with pytest.raises(TokenizationError, match="bird"):
        pipe(prompt, relations=[("bird", "above", "cat")], num_inference_steps=2, **SIZE)
    with pytest.raises(PromptError, match="one list per prompt"):
        pipe(PROMPTS, relations=[[("cat", "above", "dog")]], num_inference_steps=2, **SIZE)


@pytest.mark.parametrize("first", [[], None])
def test_a_prompts_own_relations_may_be_empty_or_left_to_the_parser(pipe, first):
    prompts = ["a cat above a dog", "to the left of a cat there is a dog"]
    result = pipe(prompts, relations=[first, [("dog", "left of", "cat")]], num_inference_steps=2, **SIZE)
    assert result.steering[0].steered == (first is None)     # None: the parser's "cat above dog"
    assert result.steering[1].steered and result.steering[1].plan.phrases == ["dog", "cat"]


def test_return_dict_false_and_missing_classifier(stock, pipe):
    images, steering = pipe("a cat above a dog", num_inference_steps=2, return_dict=False, output_type="pt", **SIZE)
    assert isinstance(images, torch.Tensor) and images.shape == (1, 3, 32, 32) and steering[0].steered
    bare = FluxRelationSteeringPipeline.from_pipe(stock)
    with pytest.raises(UsageError, match="classifier"):
        bare("a cat above a dog", num_inference_steps=2, **SIZE)
    assert bare("a cat above a dog", num_inference_steps=2, steer=False, **SIZE).images
    unsteered = bare(["a cat", "a cat next to a dog"], num_inference_steps=2, **SIZE)   # nothing to steer
    assert len(unsteered.images) == 2 and not any(s.steered for s in unsteered.steering)


def test_given_non_directional_relations_are_reported_not_steered(pipe):
    from l2s.errors import UnsupportedRelationError

    prompt = "a cat next to a dog above a bird"
    result = pipe(prompt, relations=[("cat", "next to", "dog"), ("dog", "above", "bird")], num_inference_steps=2,
                  output_type="np", **SIZE)
    report = result.steering[0].to_json()
    assert [r["relation"] for r in report["relations"]] == ["above"]
    assert [r["relation"] for r in report["non_directional"]] == ["next to"]
    only_near = pipe(prompt, relations=[("cat", "near", "dog")], num_inference_steps=2, output_type="np", **SIZE)
    assert not only_near.steering[0].steered
    with pytest.raises(UnsupportedRelationError, match=r"'is' is not a spatial relation \(steerable: left of"):
        pipe(prompt, relations=[("cat", "is", "dog")], num_inference_steps=2, **SIZE)


def test_a_negative_prompt_list_of_another_length_is_named(pipe):
    with pytest.raises(UsageError, match="negative_prompt has 2 entries for 1 prompts"):
        pipe("a cat above a dog", negative_prompt=["x", "y"], true_cfg_scale=2.0, num_inference_steps=2, **SIZE)


def test_bf16_steers(pipe):
    pipe.to(torch.bfloat16)
    result = pipe("a cat above a dog", generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                  output_type="np", **SIZE)
    records = result.steering[0].diagnostics.for_step(0)
    assert records and all(np.isfinite(r.loss).all() for r in records) and not any(r.non_finite for r in records)


def test_loads_as_a_diffusers_custom_pipeline(stock, classifier, tmp_path, monkeypatch):
    import sys

    import diffusers.utils.dynamic_modules_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))   # not the user's cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    save_pipeline(stock, tmp_path / "flux")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "flux", custom_pipeline=custom_pipeline_file("flux"),
                                             trust_remote_code=True, classifier=classifier)
    assert type(pipe).__name__ == "FluxRelationSteeringPipeline" and pipe.classifier is classifier
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a cat above a dog", num_inference_steps=2, **SIZE).steering[0].steered


def test_save_pretrained_leaves_the_classifier_out_quietly_and_keeps_it(pipe, classifier, tmp_path, caplog,
                                                                        umask_022):
    with caplog.at_level("WARNING"):
        pipe.save_pretrained(tmp_path / "saved")
    assert set(umask_022(tmp_path / "saved").values()) == {0o644}     # diffusers' weights too
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert pipe.classifier is classifier and pipe.config.classifier[1] == "RelationClassifier"
    again = FluxRelationSteeringPipeline.from_pretrained(tmp_path / "saved", classifier=classifier)
    again.set_progress_bar_config(disable=True)
    assert again("a cat above a dog", num_inference_steps=2, **SIZE).steering[0].steered
    assert FluxRelationSteeringPipeline.from_pretrained(tmp_path / "saved").classifier is None


def _count_steering_forwards(monkeypatch):
    """Record (step, rows) of every steering forward (one log-probability evaluation each)."""
    from l2s.pipelines.native import steering

    forwards, refine = [], steering.refine_latents

    def counted(latents, step, log_prob, *args):
        def counting(z, relation):
            forwards.append((step, z.shape[0]))
            return log_prob(z, relation)

        return refine(latents, step, counting, *args)

    monkeypatch.setattr(steering, "refine_latents", counted)
    return forwards


def _assert_same_report(batched: dict, alone: dict):
    """The same report but for the image indices (rows of another batch), probabilities within 1e-4."""
    batched, alone = dict(batched), dict(alone)
    steps, own_steps = batched.pop("steps"), alone.pop("steps")
    batched.pop("images"), alone.pop("images")
    last, own_last = batched.pop("last_target_probability"), alone.pop("last_target_probability")
    assert batched == alone and steps.keys() == own_steps.keys() and len(last) == len(own_last)
    for probabilities, own in zip(last, own_last):
        np.testing.assert_allclose(probabilities, own, atol=1e-4)
    for step in steps:
        assert len(steps[step]) == len(own_steps[step])
        for record, own in zip(steps[step], own_steps[step]):
            exact = ("iteration", "relation", "updated", "non_finite")
            assert {k: record[k] for k in exact} == {k: own[k] for k in exact}
            np.testing.assert_allclose(record["target_probability"], own["target_probability"], atol=1e-4)
            np.testing.assert_allclose(record["loss"], own["loss"], rtol=1e-3)


def test_the_prompts_of_a_call_are_steered_in_one_batch(pipe, monkeypatch):
    from l2s.steer import custom_schedule

    # One relation, none, two relations; two images each, so the steered rows are 0-1 and 4-5. The
    # exit probability makes images leave a step's loop at different iterations.
    prompts = ["a cat above a dog", "a cat", "a dog to the left of a cat and a cat above a bird"]
    schedule = custom_schedule(3, steered=[0, 1], iterations=6, step_size=1.0, exit_probability=0.21)
    kwargs = dict(num_inference_steps=3, num_images_per_prompt=2, steering_schedule=schedule,
                  output_type="np", **SIZE)
    forwards = _count_steering_forwards(monkeypatch)
    together = pipe(prompts, generator=_generators(6), **kwargs)
    batched = list(forwards)
    alone = []
    for k, prompt in enumerate(prompts):
        forwards.clear()
        alone.append((pipe(prompt, generator=_generators(2, seed=2 * k), **kwargs), list(forwards)))
    for k, (single, _) in enumerate(alone):
        assert np.abs(together.images[2 * k:2 * k + 2] - single.images).max() <= 1 / 255
        report = together.steering[k].to_json()
        assert report["images"] == [2 * k, 2 * k + 1]
        _assert_same_report(report, single.steering[0].to_json())
    assert [s.steered for s in together.steering] == [True, False, True]
    # Exits differ between the prompts, so each prompt's records were cut from the batch's at its own exit.
    records = [[len(s.diagnostics.for_step(step)) for step in (0, 1)] for s in together.steering]
    assert records[0] != records[2]
    # One steering forward per iteration over all four steered rows: as many as the prompt that
    # iterates longest needs alone, fewer than the prompts need one by one.
    assert {rows for _, rows in batched} == {4}
    for step in (0, 1):
        per_prompt = [sum(1 for s, _ in own if s == step) for _, own in alone]
        assert sum(1 for s, _ in batched if s == step) == max(per_prompt)
    assert len(batched) < sum(len(own) for _, own in alone)


def test_maps_of_another_grid_are_said_once_and_reported_per_steered_prompt(stock, caplog):
    import dataclasses
    import logging

    from l2s.classifier import RelationClassifier

    config = dataclasses.replace(tiny_classifier_for(stock).config, orig_map_size=8, map_size=8)
    pipe = FluxRelationSteeringPipeline.from_pipe(stock, classifier=RelationClassifier(config).eval())
    with caplog.at_level(logging.WARNING, logger="l2s"):
        out = pipe(["a cat above a dog", "a cup"], num_inference_steps=1, **SIZE)    # 16x16 tokens at 32 px
        pipe("a cat above a dog", num_inference_steps=1, **SIZE)
    (record,) = caplog.records
    assert "trained on maps of a 8x8 token grid, but this model at 32x32 px gives 16x16" in record.getMessage()
    reports = [steering.to_json() for steering in out.steering]
    assert len(reports[0]["warnings"]) == 1 and reports[1]["warnings"] == []       # "a cup" is not steered


@pytest.mark.parametrize("options, message", [
    (dict(classifier="/models/clf"), "classifier must be a RelationClassifier, got '/models/clf'"),
    (dict(classifier=torch.nn.Linear(2, 2)), "classifier must be a RelationClassifier, got Linear"),
    (dict(steering_mode="fastest"), "unknown execution mode 'fastest'"),
    (dict(capture_backend="cuda-magic"), "unknown capture backend 'cuda-magic'"),
    (dict(steering_mode="reference", capture_backend="native"), "applies to the fast modes"),
    (dict(steering_family="flux-pro"), "steering_family must be one of flux-dev, flux-schnell, got 'flux-pro'"),
    (dict(steering_schedule="fastest"), "unknown schedule 'fastest'"),
    (dict(torch_dtype="bf16"), "torch_dtype must be a torch.dtype"),
])
def test_from_pipe_refuses_bad_steering_options_at_once(stock, classifier, options, message):
    with pytest.raises(UsageError, match=message):
        FluxRelationSteeringPipeline.from_pipe(stock, **{"classifier": classifier, **options})


@pytest.mark.parametrize("call, message", [
    (dict(prompt=[]), "prompt must be a string or a non-empty list of strings, got \\[\\]"),
    (dict(prompt=5), "prompt must be a string or a non-empty list of strings, got 5"),
    (dict(prompt="a cat above a dog", steer="no"), "steer must be True or False, got 'no'"),
    (dict(prompt="a cat above a dog", steer=None), "steer must be True or False, got None"),
    (dict(prompt="a cat above a dog", prompt_2="a photo of a horse"), "prompt_2 .* must be the prompt itself"),
    (dict(prompt=PROMPTS, prompt_2=PROMPTS[::-1]), "prompt_2 .* must be the prompt itself"),
    (dict(prompt="a cat above a dog", num_inference_steps=0), "^num_inference_steps must be a positive integer, got 0"),
    (dict(prompt="a cat above a dog", num_inference_steps="2"), "^num_inference_steps must be a positive integer"),
])
def test_a_call_refuses_bad_prompts_and_steer_values(pipe, call, message):
    with pytest.raises(UsageError, match=message):
        pipe(**{"num_inference_steps": 2, **SIZE, **call})


def test_a_prompt_2_that_is_the_prompt_or_an_unsteered_call_runs(stock, pipe):
    expected = stock(PROMPTS, generator=_generators(2), num_inference_steps=2, output_type="np", **SIZE).images
    same = pipe(PROMPTS, prompt_2=list(PROMPTS), generator=_generators(2), num_inference_steps=2, output_type="np",
                **SIZE)
    assert all(steering.steered for steering in same.steering)
    horse = ["a photo of a horse"] * 2        # the T5 encoder's text: unsteered, as stock runs it
    other = pipe(PROMPTS, prompt_2=horse, steer=False, generator=_generators(2), num_inference_steps=2,
                 output_type="np", **SIZE).images
    stock_other = stock(PROMPTS, prompt_2=horse, generator=_generators(2), num_inference_steps=2,
                        output_type="np", **SIZE).images
    assert np.array_equal(other, stock_other) and not np.array_equal(other, expected)


def test_a_classifier_that_does_not_fit_is_refused_on_every_call(stock, classifier):
    from l2s.classifier import RelationClassifier
    from l2s.demo import tiny_classifier_config
    from l2s.errors import ClassifierMismatchError

    wrong = RelationClassifier(tiny_classifier_config(channels=classifier.config.channels + 1))
    pipe = FluxRelationSteeringPipeline.from_pipe(stock, classifier=wrong)
    for _ in range(2):
        with pytest.raises(ClassifierMismatchError, match="maps per object"):
            pipe("a cat above a dog", num_inference_steps=2, **SIZE)


def test_native_capture_without_its_kernels_is_refused_before_the_denoising_loop(stock, classifier, monkeypatch):
    import sys

    pipe = FluxRelationSteeringPipeline.from_pipe(stock, classifier=classifier, capture_backend="native")
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: pytest.fail("denoised"))
    monkeypatch.setitem(sys.modules, "l2s_fast", None)      # as if it were never built
    with pytest.raises(UsageError, match="needs the native module l2s_fast"):
        pipe("a cat above a dog", num_inference_steps=2, **SIZE)


def test_a_native_call_needs_autograd_and_runs_one_at_a_time(pipe):
    with torch.inference_mode(), pytest.raises(UsageError, match=r"outside torch.inference_mode\(\)"):
        pipe("a cat above a dog", num_inference_steps=2, **SIZE)
    with _held_call(pipe) as outcome, pytest.raises(UsageError, match="already generating"):
        pipe("a cat above a dog", num_inference_steps=2, **SIZE)
    assert outcome["images"].shape[0] == 1


def test_views_over_the_same_modules_run_one_steering_call_at_a_time(pipe):
    """Two from_pipe views share the transformer and scheduler: a call on one while the other runs is
    refused (before, both failed with an IndexError from the shared scheduler)."""
    view = FluxRelationSteeringPipeline.from_pipe(pipe)
    view.set_progress_bar_config(disable=True)
    with _held_call(pipe) as outcome, pytest.raises(UsageError, match="already generating"):
        view("a cat above a dog", num_inference_steps=2, **SIZE)
    assert outcome["images"].shape[0] == 1
    assert view("a cat above a dog", num_inference_steps=2, output_type="np", **SIZE).images.shape[0] == 1


def test_overlapping_calls_of_two_pipelines_sharing_a_classifier_keep_it_frozen_until_both_end(classifier):
    """Two loaded pipelines (one per thread) may share a classifier. Before, the first call to end put the
    classifier back in train mode while the second still steered with it (dropout: other iterations), and
    the second then left it frozen in eval mode, as the user had not."""
    from l2s.steer import custom_schedule

    classifier.train().requires_grad_(True)              # a classifier being trained
    views = [FluxRelationSteeringPipeline.from_pipe(tiny_flux_pipeline(seed=0), classifier=classifier)
             for _ in range(2)]
    schedule = custom_schedule(3, steered=[0, 1, 2], iterations=2, step_size=1.0)

    def steps(view, callback=None):
        view.set_progress_bar_config(disable=True)
        out = view("a cat above a dog", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                   steering_schedule=schedule, callback_on_step_end=callback, output_type="np", **SIZE)
        return out.steering[0].to_json()["steps"]

    alone = steps(views[1])
    first_in, second_in, first_done, outcome = threading.Event(), threading.Event(), threading.Event(), {}

    def hold(entered, until):
        def on_step_end(p, step, timestep, tensors):
            if step == 0:
                entered.set()
                until.wait(60)
            return tensors
        return on_step_end

    def first():      # enters first, ends while the second call waits before its step 1
        outcome["first"] = steps(views[0], hold(first_in, second_in))
        first_done.set()

    worker = threading.Thread(target=first)
    worker.start()
    assert first_in.wait(60)
    assert steps(views[1], hold(second_in, first_done)) == alone
    worker.join(120)
    assert outcome["first"] == alone
    assert classifier.training and all(p.requires_grad for p in classifier.parameters())


def test_a_steered_call_leaves_the_modules_copyable(pipe):
    import copy

    pipe("a cat above a dog", num_inference_steps=2, output_type="np", **SIZE)
    copy.deepcopy(pipe.transformer)
    copy.deepcopy(pipe.scheduler)


@contextlib.contextmanager
def _held_call(pipe):
    """Within: a call of ``pipe`` runs in another thread, held inside its denoising loop; yields the
    dict its images land in once the block ends and the call is let go."""
    started, release, outcome = threading.Event(), threading.Event(), {}

    def hold(p, step, timestep, tensors):
        started.set()
        release.wait(60)
        return tensors

    def first():
        outcome["images"] = pipe("a cat above a dog", num_inference_steps=2, callback_on_step_end=hold,
                                 output_type="np", **SIZE).images

    worker = threading.Thread(target=first)
    worker.start()
    assert started.wait(60)
    try:
        yield outcome
    finally:
        release.set()
        worker.join(120)


def test_a_classifier_of_another_models_maps_is_said_once_and_reported(stock, classifier, caplog):
    import logging

    classifier.training_record = {"model": "tiny-dev", "model_family": "flux-dev"}
    pipe = FluxRelationSteeringPipeline.from_pipe(stock, classifier=classifier)
    with caplog.at_level(logging.WARNING, logger="l2s"):
        out = pipe(["a cat above a dog", "a cup"], num_inference_steps=1, **SIZE)
        pipe("a cat above a dog", num_inference_steps=1, **SIZE)
    line = ("the classifier was trained on maps of tiny-dev (flux-dev) but steers a flux-schnell model: it reads "
            "maps it was not trained on (steering may be weaker)")
    assert [r.getMessage() for r in caplog.records] == ["warning: " + line]
    reports = [steering.to_json() for steering in out.steering]
    assert reports[0]["warnings"] == [line] and reports[1]["warnings"] == []       # "a cup" is not steered


def test_a_callback_sees_the_tensors_it_asked_for_as_on_the_stock_pipeline(stock, pipe):
    from l2s.steer import custom_schedule

    seen = {}

    def recording(name):
        def on_step_end(p, step, timestep, tensors):
            seen.setdefault(name, []).append(sorted(tensors))
            return {}
        return on_step_end

    kwargs = dict(num_inference_steps=2, callback_on_step_end_tensor_inputs=["prompt_embeds"],
                  output_type="latent", **SIZE)
    stock("a cat above a dog", callback_on_step_end=recording("stock"), **kwargs)
    pipe("a cat above a dog", callback_on_step_end=recording("plain"), steer=False, **kwargs)
    result = pipe("a cat above a dog", callback_on_step_end=recording("steered"),
                  steering_schedule=custom_schedule(2, steered=[0, 1], iterations=1, step_size=1.0), **kwargs)
    assert sorted({r.step for r in result.steering[0].diagnostics.records}) == [0, 1]   # step 1 from the callback
    assert seen["steered"] == seen["plain"] == seen["stock"] == [["prompt_embeds"]] * 2
