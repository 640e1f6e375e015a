"""Steered generation end to end on tiny random FLUX and SD pipelines."""
import pytest
import torch

from l2s.errors import ClassifierMismatchError, UnsupportedRelationError, UsageError
from l2s.pipelines import FluxSteeringPipeline, SDSteeringPipeline, wrap_pipeline
from l2s.steer import custom_schedule, reference_schedule
from l2s.demo import tiny_classifier_config, tiny_classifier_for, tiny_flux_pipeline, tiny_sd_pipeline
from l2s.classifier import RelationClassifier


def _sensitive(classifier, gain=3000.0):
    """A random classifier reads maps of ~1/T per pixel; amplify its input so maps matter."""
    with torch.no_grad():
        classifier.object_extractor.input_projection.weight.mul_(gain)
    return classifier


@pytest.fixture(scope="module")
def flux():
    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=2, seed=0)
    return wrap_pipeline(pipe, _sensitive(tiny_classifier_for(pipe, seed=1)))


@pytest.fixture(scope="module")
def sd():
    pipe = tiny_sd_pipeline(seed=0)
    return wrap_pipeline(pipe, _sensitive(tiny_classifier_for(pipe, seed=1)))


def _losses(result, step):
    return [r.loss[0] for r in result.diagnostics.for_step(step)]


def test_wrap_picks_the_model_family(flux, sd):
    assert isinstance(flux, FluxSteeringPipeline) and flux.family == "flux-schnell"
    assert isinstance(sd, SDSteeringPipeline) and sd.family == "sd14"
    dev = wrap_pipeline(tiny_flux_pipeline(seed=0, guidance_embeds=True),
                        tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=0))
    assert dev.family == "flux-dev"
    assert all(not p.requires_grad for p in flux.pipe.transformer.parameters())
    # Progress bars name the family; a model given its family and steps names the rule it follows.
    assert flux.label == "flux-schnell" and sd.label == "sd14"
    named = wrap_pipeline(tiny_flux_pipeline(seed=0), tiny_classifier_for(tiny_flux_pipeline(seed=0), seed=0),
                          family="flux-dev", steps=12)
    assert named.family == "flux-dev" and named.default_steps() == 12
    assert named.label == "flux (flux-dev rule)"


def test_step_size_applies_to_named_schedules_only(flux):
    gentle = wrap_pipeline(flux.pipe, flux.classifier, step_size=0.5)
    kwargs = dict(num_inference_steps=2, height=32, width=32, seed=3, progress=False)
    result = gentle("a cat above a dog", schedule="reference", **kwargs)
    assert set(result.schedule.step_sizes) == {0.5} and tuple(result.report()["schedule"]["step_sizes"]) == (0.5, 0.5)
    published = flux("a cat above a dog", schedule="reference", **kwargs)
    assert set(published.schedule.step_sizes) == {5.0}
    # same noise and losses before the first update; the step size changes what the update does
    assert _losses(result, 0)[0] == pytest.approx(_losses(published, 0)[0], rel=1e-6)
    assert list(result.images[0].tobytes()) != list(published.images[0].tobytes())
    own = custom_schedule(2, steered=[0], iterations=2, step_size=2.0)
    assert set(gentle("a cat above a dog", schedule=own, **kwargs).schedule.step_sizes) == {2.0}


@pytest.mark.parametrize("step_size", [0.0, -2.0, float("nan"), "1", True])
def test_step_size_must_be_a_positive_number(flux, step_size):
    with pytest.raises(UsageError, match="step size"):
        wrap_pipeline(flux.pipe, flux.classifier, step_size=step_size)


def test_plan_maps_objects_to_tokens_and_classes(flux):
    plan = flux.plan("a photo of a red cat to the left of a teddy bear")
    assert plan.phrases == ["red cat", "teddy bear"]
    assert plan.pairs == [(0, 1)]
    assert plan.class_indices == [3]             # "to the left of" in the published class order
    assert len(plan.token_indices[1]) == 2       # "teddy" + "bear" in the tiny T5 vocabulary
    assert not flux.plan("a cat next to a dog").steered


@pytest.mark.parametrize("which, step_size", [("flux", 1.0), ("sd", 5.0)])
def test_steering_lowers_the_loss_at_the_steered_step(which, step_size, flux, sd):
    steerer = flux if which == "flux" else sd
    schedule = custom_schedule(2, steered=[0], iterations=5, step_size=step_size)
    result = steerer("a cat above a dog", num_inference_steps=2, height=32, width=32,
                     schedule=schedule, progress=False)
    losses = _losses(result, 0)
    assert len(losses) == 5
    assert losses[-1] < losses[0]                            # the target probability rose
    assert all(b < a for a, b in zip(losses, losses[1:]))    # monotonically at this step size
    assert result.images[0].size == (32, 32)


def test_multi_relation_alternation_visits_each_relation(flux):
    schedule = custom_schedule(2, steered=[0, 1], iterations=5, step_size=0.01)
    result = flux("a frog above a cat below a dog", num_inference_steps=2, height=32, width=32,
                  schedule=schedule, progress=False)
    for step in (0, 1):
        assert [r.relation for r in result.diagnostics.for_step(step)] == [0, 1, 0, 1, 0]
    assert result.plan.phrases == ["frog", "cat", "dog"]
    assert result.plan.pairs == [(0, 1), (1, 2)]


def test_schnell_reference_only_changes_the_initial_noise(flux, monkeypatch):
    calls = []
    original = flux.refine

    def spy(latents, step, *args, **kwargs):
        out = original(latents, step, *args, **kwargs)
        calls.append((step, latents.clone(), out.clone()))
        return out

    monkeypatch.setattr(flux, "refine", spy)
    steered = flux("a cat above a dog", height=32, width=32, seed=3, progress=False)
    assert steered.schedule.name == "reference" and steered.schedule.num_steps == 4
    assert [c[0] for c in calls] == [0]                       # step 0 only
    initial, refined = calls[0][1], calls[0][2]
    plain = flux("a cat above a dog", height=32, width=32, seed=3, steer=False, progress=False)
    assert not torch.equal(initial, refined)
    # Running the plain sampler from the refined noise reproduces the steered image exactly.
    from_refined = flux("a cat above a dog", height=32, width=32, seed=3, steer=False,
                        latents=refined, progress=False)
    assert list(from_refined.images[0].tobytes()) == list(steered.images[0].tobytes())
    assert list(plain.images[0].tobytes()) != list(steered.images[0].tobytes())


def test_same_seed_gives_the_same_unsteered_image(flux):
    a = flux("a cat above a dog", height=32, width=32, seed=5, steer=False, progress=False)
    b = flux("a cat above a dog", height=32, width=32, seed=5, steer=False, progress=False)
    assert list(a.images[0].tobytes()) == list(b.images[0].tobytes())
    assert not a.diagnostics.records


def test_unsteerable_prompt_runs_unsteered(flux):
    result = flux("a cat next to a dog", height=32, width=32, progress=False)
    assert result.schedule is None and not result.diagnostics.records
    assert "next to" in result.report()["note"] or result.report()["non_directional"]


def test_relations_given_to_the_call_replace_the_parsers(flux):
    from l2s.errors import PromptError

    kwargs = dict(num_inference_steps=2, height=32, width=32, progress=False,
                  schedule=custom_schedule(2, steered=[0], iterations=1, step_size=0.01))
    hard = "to the left of a cat there is a dog"                  # the parser finds no subject first
    with pytest.raises(PromptError):
        flux(hard, **kwargs)
    one = flux(hard, relations=[("dog", "left of", "cat")], **kwargs)
    assert one.plan.phrases == ["dog", "cat"] and one.outcome.steered
    batch = flux(["a cat above a dog", hard, "a cup above a book"],
                 relations=[[], [("dog", "left of", "cat")], None], **kwargs)
    assert [outcome.steered for outcome in batch.outcomes] == [False, True, True]   # None: the parser's
    with pytest.raises(PromptError, match="2 lists for 3 prompts"):
        flux(["a", "b", "c"], relations=[[], []], **kwargs)
    # The same text with other relations (two requests of one batch): each image follows its own.
    other = flux([hard, hard, hard], seed=[0, 0, 0], relations=[[("dog", "left of", "cat")], [],
                                                                 [("cat", "above", "dog")]], **kwargs)
    assert [outcome.steered for outcome in other.outcomes] == [True, False, True]
    assert [[t.relation for t in plan.parsed.triplets] for plan in other.plans] == [["left of"], [], ["above"]]
    alone = flux(hard, seed=0, relations=[("cat", "above", "dog")], **kwargs)
    assert [r.target_probability[0] for r in other.diagnostics.for_image(2).records] == pytest.approx(
        [r.target_probability[0] for r in alone.diagnostics.records], rel=1e-4)
    twice = flux([hard, hard], relations=[[("dog", "left of", "cat")], (["dog", "left of", "cat"],)], **kwargs)
    assert [outcome.steered for outcome in twice.outcomes] == [True, True]      # the same, spelled otherwise
    with pytest.raises(PromptError, match="got the string 'dog, left of, cat'"):
        flux(hard, relations="dog, left of, cat", **kwargs)


def test_report_contains_relations_tokens_and_probabilities(flux):
    schedule = custom_schedule(2, steered=[0], iterations=1, step_size=0.01)
    report = flux("a cat above a dog", num_inference_steps=2, height=32, width=32,
                  schedule=schedule, progress=False).report()
    assert report["relations"] == [{"subject": "cat", "relation": "above", "object": "dog"}]
    assert set(report["token_indices"]) == {"cat", "dog"}
    probs = report["steps"]["0"][0]["target_probability"]
    assert len(probs) == 1 and 0.0 < probs[0] < 1.0


def test_report_gives_each_relations_last_probability(flux):
    schedule = custom_schedule(2, steered=[0], iterations=3, step_size=0.01)
    report = flux("a cat above a dog and a cup left of a book", num_inference_steps=2, height=32, width=32,
                  schedule=schedule, progress=False).report()
    records = report["steps"]["0"]                  # relations 0, 1, 0
    assert report["last_target_probability"] == [records[2]["target_probability"], records[1]["target_probability"]]


def test_classifier_channel_mismatch_is_refused(flux):
    wrong = RelationClassifier(tiny_classifier_config(channels=flux.map_channels() + 1)).eval()
    steerer = wrap_pipeline(flux.pipe, wrong)
    with pytest.raises(ClassifierMismatchError, match="maps per object"):
        steerer("a cat above a dog", height=32, width=32, progress=False)
    # the failed call left the user's pipeline stock
    assert type(flux.pipe.transformer.transformer_blocks[0].attn.processor).__name__ == "FluxAttnProcessor"


def test_diagonal_relation_with_a_four_direction_classifier_is_refused(flux):
    with pytest.raises(UnsupportedRelationError):
        flux.plan("a cat top-left of a dog")


def test_schedule_length_must_match_steps(flux):
    with pytest.raises(UsageError):
        flux("a cat above a dog", num_inference_steps=3, schedule=reference_schedule("flux-schnell", 4),
             height=32, width=32, progress=False)


def test_non_finite_classifier_skips_updates_and_reports_it():
    pipe = tiny_flux_pipeline(seed=0)
    classifier = tiny_classifier_for(pipe, seed=0)
    with torch.no_grad():
        next(classifier.parameters()).fill_(float("nan"))
    steerer = wrap_pipeline(pipe, classifier)
    result = steerer("a cat above a dog", height=32, width=32, progress=False)
    assert result.report()["non_finite_events"] == 1
    assert result.images[0].size == (32, 32)                     # still generated, unsteered
    plain = steerer("a cat above a dog", height=32, width=32, steer=False, progress=False)
    assert list(plain.images[0].tobytes()) == list(result.images[0].tobytes())


@pytest.mark.parametrize("which", ["flux", "sd"])
def test_fast_and_reference_modes_steer_identically(which, flux, sd):
    base = flux if which == "flux" else sd
    reference = wrap_pipeline(base.pipe, base.classifier, mode="reference")
    assert reference.mode.name == "reference" and base.mode.name == "fast"
    schedule = custom_schedule(2, steered=[0, 1], iterations=3, step_size=1.0)
    kwargs = dict(num_inference_steps=2, height=32, width=32, schedule=schedule, seed=7,
                  progress=False)
    fast_result = base("a cat above a dog", **kwargs)
    ref_result = reference("a cat above a dog", **kwargs)
    trajectory = lambda r: [(x.step, x.iteration, x.relation) for x in r.diagnostics.records if x.updated]
    assert trajectory(fast_result) == trajectory(ref_result)
    fast_p = [x.target_probability[0] for x in fast_result.diagnostics.records if x.updated]
    ref_p = [x.target_probability[0] for x in ref_result.diagnostics.records if x.updated]
    assert fast_p == pytest.approx(ref_p, rel=1e-4, abs=1e-6)
    a = torch.tensor(list(fast_result.images[0].tobytes()), dtype=torch.float)
    b = torch.tensor(list(ref_result.images[0].tobytes()), dtype=torch.float)
    assert (a - b).abs().max() <= 1.0                      # uint8 rounding at most


def test_unknown_mode_is_refused(flux):
    with pytest.raises(UsageError):
        wrap_pipeline(flux.pipe, flux.classifier, mode="turbo")


def test_schedule_presets_by_name(flux):
    result = flux("a cat above a dog", schedule="early-exit", height=32, width=32, progress=False)
    assert result.schedule.name == "early-exit" and result.schedule.num_steps == 4
    with pytest.raises(UsageError, match="preset"):
        flux("a cat above a dog", schedule="warp", height=32, width=32, progress=False)


def test_fast_preset_samples_its_fraction_of_the_models_own_steps(flux, monkeypatch):
    """``fast`` recommends 28 of FLUX.1-dev's 50 steps; a model with its own default (the shapes
    world: 12 steps under the flux-dev rule) samples 28/50 of that, 7, never more than its default."""
    named = wrap_pipeline(flux.pipe, flux.classifier, family="flux-dev", steps=12)
    calls, step = [], named.pipe.scheduler.step
    monkeypatch.setattr(named.pipe.scheduler, "step", lambda *a, **k: calls.append(1) or step(*a, **k))
    result = named("a cat above a dog", schedule="fast", height=32, width=32, progress=False)
    assert result.schedule.num_steps == 7 and len(calls) == 7
    assert result.schedule.iterations == (16, 1, 1, 1, 0, 0, 0)       # front 10 %: one heavy step
    # what a run records before its first image: the call's own report, defaults filled in
    assert named.sampling_in_effect(schedule="fast", height=32, width=32) == {
        "sampling": result.report()["sampling"], "schedule": result.report()["schedule"]}
    assert named("a cat above a dog", schedule="fast", num_inference_steps=3, height=32, width=32,
                 progress=False).schedule.num_steps == 3                  # --steps overrides it


def test_plain_steps_run_on_the_engine_and_steered_steps_on_autograd():
    """An ONNX Runtime engine refuses non-stock processors: it can only serve plain steps if the
    capture is off the model outside steered steps. Images match the eager engine."""
    pipe = tiny_flux_pipeline(seed=0)
    classifier = _sensitive(tiny_classifier_for(pipe, seed=1))
    schedule = custom_schedule(3, steered=[0], iterations=2, step_size=1.0)
    kwargs = dict(num_inference_steps=3, height=32, width=32, schedule=schedule, seed=2, progress=False)
    eager = FluxSteeringPipeline(pipe, classifier, engine="eager")("a cat above a dog", **kwargs)
    onnx = FluxSteeringPipeline(pipe, classifier, engine="onnxruntime")("a cat above a dog", **kwargs)
    assert eager.engine["name"].startswith("eager") and "onnx" in onnx.engine["name"]
    assert onnx.report()["plain_step_engine"] == onnx.engine
    assert onnx.report()["execution"] == {"mode": "fast", "capture_backend": "sdpa"}
    assert onnx.timings["plain_engine_build_s"] > 0 and "plain_engine_build_s" not in eager.timings
    assert [r.loss for r in onnx.diagnostics.records] == [r.loss for r in eager.diagnostics.records]
    a = torch.tensor(list(eager.images[0].tobytes()), dtype=torch.float)
    b = torch.tensor(list(onnx.images[0].tobytes()), dtype=torch.float)
    assert (a - b).abs().max() <= 2.0
    # Weights changed in place (as peft merges a LoRA): the exported engine is built again from them.
    onnx_steerer = FluxSteeringPipeline(pipe, classifier, engine="onnxruntime")
    onnx_steerer("a cat above a dog", **kwargs)
    assert "plain_engine_build_s" not in onnx_steerer("a cat above a dog", **kwargs).timings   # built once
    pipe.transformer.proj_out.weight.data *= 3
    try:
        changed = [FluxSteeringPipeline(pipe, classifier, engine="eager")("a cat above a dog", **kwargs),
                   onnx_steerer("a cat above a dog", **kwargs)]
    finally:
        pipe.transformer.proj_out.weight.data /= 3
    a, b = (torch.tensor(list(r.images[0].tobytes()), dtype=torch.float) for r in changed)
    assert (a - b).abs().max() <= 2.0


def test_an_engine_the_call_cannot_run_is_refused_before_any_steering():
    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0)
    classifier = tiny_classifier_for(pipe, seed=1)
    with pytest.raises(UsageError, match="mode 'reference' runs every step eagerly.*engine 'compile'"):
        FluxSteeringPipeline(pipe, classifier, mode="reference", engine="compile")
    if not torch.cuda.is_available():
        steerer = FluxSteeringPipeline(pipe, classifier, engine="cuda-graph")     # the model may move to CUDA later
        with pytest.raises(UsageError, match="the cuda-graph engine needs the model on CUDA; it is on cpu"):
            steerer("a cat above a dog", num_inference_steps=2, height=32, width=32, progress=False)
        assert not steerer._engines
    # Set after wrapping, the engine is checked as at wrapping time.
    steerer = FluxSteeringPipeline(pipe, classifier, engine="eager")
    with pytest.raises(UsageError, match="engine must be one of auto, eager.*got 'turbo'"):
        steerer.engine_kind = "turbo"
    steerer.engine_kind = "compile"
    assert steerer.engine_kind == "compile"
    reference = FluxSteeringPipeline(pipe, classifier, mode="reference")
    with pytest.raises(UsageError, match="mode 'reference' runs every step eagerly"):
        reference.engine_kind = "compile"
    # The mode changes after wrapping too; reference takes no built engine, and then runs eager.
    with pytest.raises(UsageError, match="mode 'reference' runs every step eagerly.*engine 'compile' needs one of"):
        steerer.mode = "reference"
    assert steerer.mode.name == "fast"
    steerer.engine_kind = "auto"
    objective = steerer.objective
    steerer.mode = "fast"                  # unchanged: what it compiled is kept
    assert steerer.objective is objective
    steerer.mode = "reference"
    assert (steerer.mode.name, steerer.objective.mode.name, steerer.engine_kind) == ("reference", "reference", "eager")
    with pytest.raises(UsageError, match="unknown execution mode 'turbo'"):
        steerer.mode = "turbo"
    # What the call would refuse or ignore is refused when the pipeline is made or changed.
    with pytest.raises(UsageError, match="unknown schedule 'bogus'; expected a Schedule or one of reference"):
        FluxSteeringPipeline(pipe, classifier, schedule="bogus")
    with pytest.raises(UsageError, match="capture backend 'native' applies to the fast modes"):
        FluxSteeringPipeline(pipe, classifier, mode="reference", capture_backend="native")
    with pytest.raises(UsageError, match="capture backend 'native' applies to the fast modes"):
        steerer.capture_backend = "native"                      # steerer is in reference mode now
    native = FluxSteeringPipeline(pipe, classifier, capture_backend="native")
    with pytest.raises(UsageError, match="capture backend 'native' applies to the fast modes"):
        native.mode = "reference"
    assert native.mode.name == "fast"


def test_the_reference_mode_reports_no_capture_backend(flux):
    """Reference mode computes its maps with its own explicit attention: a report naming the fast
    modes' backend would claim a kernel that never ran."""
    reference = FluxSteeringPipeline(flux.pipe, flux.classifier, mode="reference")
    assert reference.capture_backend == "sdpa" and reference.capture_backend_in_use is None
    result = reference("a cat above a dog", num_inference_steps=1, height=32, width=32, progress=False)
    assert result.report()["execution"] == {"mode": "reference", "capture_backend": None}
    reference.mode = "fast"          # the backend set applies again in a fast mode
    assert reference.capture_backend_in_use == "sdpa"


def test_stable_diffusion_takes_the_default_engine_and_refuses_others():
    from l2s.demo import tiny_sd_pipeline
    from l2s.pipelines import wrap_pipeline

    pipe = tiny_sd_pipeline(seed=0)
    classifier = tiny_classifier_for(pipe, seed=1)
    assert wrap_pipeline(pipe, classifier, engine="auto").capture_backend == "sdpa"
    with pytest.raises(UsageError, match=r"options \['engine'\] apply to FLUX pipelines only"):
        wrap_pipeline(pipe, classifier, engine="compile")


def test_true_cfg_matches_diffusers_flux_pipeline():
    """Unsteered generation with true CFG is diffusers' FluxPipeline(true_cfg_scale=...) image."""
    pipe = tiny_flux_pipeline(seed=0)
    classifier = tiny_classifier_for(pipe, seed=1)
    kwargs = dict(num_inference_steps=3, height=32, width=32)
    ours = FluxSteeringPipeline(pipe, classifier, engine="eager", true_cfg_scale=2.5)(
        "a cat above a dog", steer=False, seed=4, progress=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a cat above a dog", true_cfg_scale=2.5, negative_prompt="", output_type="np",
                  generator=torch.Generator().manual_seed(4), max_sequence_length=512, **kwargs).images[0]
    plain = FluxSteeringPipeline(pipe, classifier, engine="eager")(
        "a cat above a dog", steer=False, seed=4, progress=False, **kwargs)
    a = torch.tensor(list(ours.images[0].tobytes()), dtype=torch.float)
    b = torch.from_numpy(theirs).flatten().mul(255).round()
    assert (a - b).abs().max() <= 1.0
    c = torch.tensor(list(plain.images[0].tobytes()), dtype=torch.float)
    assert (a - c).abs().max() >= 3      # guidance changed the image (the tiny model reads text weakly)
    call = {"num_inference_steps": 3, "height": 32, "width": 32, "guidance_scale": None}   # schnell: no guidance read
    assert ours.report()["sampling"] == {**call, "true_cfg_scale": 2.5, "negative_prompt": ""}
    assert plain.report()["sampling"] == {**call, "true_cfg_scale": 1.0}


@pytest.mark.parametrize("family", ["flux-dev", "sd"])
def test_the_report_records_the_sampling_defaults_taken_and_they_make_the_same_image(family):
    """Steps, size and guidance left to the model are recorded as it took them: passing them back
    makes the same image."""
    pipe = tiny_flux_pipeline(seed=0, guidance_embeds=True) if family == "flux-dev" else tiny_sd_pipeline(seed=0)
    steerer = wrap_pipeline(pipe, tiny_classifier_for(pipe, seed=1))
    first = steerer("a cat above a dog", steer=False, seed=3, num_inference_steps=2, progress=False)
    sampling = first.report()["sampling"]
    default = {"flux-dev": 3.5, "sd": 7.5}[family]
    assert sampling["num_inference_steps"] == 2 and sampling["guidance_scale"] == default
    assert sampling["height"] == sampling["width"] == first.images[0].size[0]
    again = steerer("a cat above a dog", steer=False, seed=3, progress=False,
                    **{k: sampling[k] for k in ("num_inference_steps", "height", "width", "guidance_scale")})
    assert again.images[0].tobytes() == first.images[0].tobytes()
    assert steerer.sampling_in_effect(num_inference_steps=2)["sampling"] == sampling   # known before a call


def test_true_cfg_leaves_the_steering_loss_alone(flux):
    """Steering reads the conditional pass only: at the first step (same noise) the losses match."""
    cfg = FluxSteeringPipeline(flux.pipe, flux.classifier, true_cfg_scale=3.0)
    schedule = custom_schedule(3, steered=[0], iterations=2, step_size=1.0)
    kwargs = dict(num_inference_steps=3, height=32, width=32, schedule=schedule, seed=2, progress=False)
    with_cfg, without = cfg("a cat above a dog", **kwargs), flux("a cat above a dog", **kwargs)
    assert _losses(with_cfg, 0) == pytest.approx(_losses(without, 0), rel=1e-5)
    assert list(with_cfg.images[0].tobytes()) != list(without.images[0].tobytes())


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), "2"])
def test_true_cfg_scale_must_be_positive(flux, scale):
    with pytest.raises(UsageError, match="true_cfg_scale"):
        FluxSteeringPipeline(flux.pipe, flux.classifier, true_cfg_scale=scale)


def test_a_second_call_while_one_runs_is_refused_and_the_first_finishes(flux):
    """Calls from two threads on one pipeline would share its scheduler: the second is refused."""
    import threading

    started, release, outcome = threading.Event(), threading.Event(), {}

    def slow_callback(*_):   # holds the first call inside its denoising loop
        started.set()
        release.wait(60)

    def first():
        outcome["first"] = flux("a cat above a dog", num_inference_steps=2, height=32, width=32, progress=False)

    original = flux.refine
    flux.refine = lambda *a, **k: (slow_callback(), original(*a, **k))[1]
    try:
        worker = threading.Thread(target=first)
        worker.start()
        assert started.wait(60)
        with pytest.raises(UsageError, match="already generating"):
            flux("a cat above a dog", num_inference_steps=2, height=32, width=32, progress=False)
        release.set()
        worker.join(120)
    finally:
        del flux.refine
    assert outcome["first"].images
    assert flux("a cat above a dog", num_inference_steps=2, height=32, width=32, progress=False).images


def test_steering_under_inference_mode_is_one_clear_error(flux):
    with torch.inference_mode(), pytest.raises(UsageError, match=r"outside torch.inference_mode\(\)"):
        flux("a cat above a dog", num_inference_steps=2, height=32, width=32, progress=False)
    with torch.inference_mode():   # nothing to differentiate: fine
        assert flux("a cat above a dog", num_inference_steps=2, height=32, width=32, steer=False,
                    progress=False).images


def test_a_pipeline_keeps_its_last_used_engines_only(monkeypatch, caplog):
    """A service meets many resolutions: only the ENGINES_KEPT last used stay, the oldest go first."""
    import logging

    import l2s.pipelines.flux as flux
    from l2s.engines import make_plain_step_engine

    built = []

    def counted(module, inputs, kind):
        built.append(tuple(inputs["hidden_states"].shape))
        engine = make_plain_step_engine(module, inputs, kind="eager")
        engine.kind = "compile"       # stands for an engine that holds something: its drop is logged
        return engine

    monkeypatch.setattr(flux, "make_plain_step_engine", counted)
    monkeypatch.setattr(flux, "ENGINES_KEPT", 2)
    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1, seed=0)
    steerer = FluxSteeringPipeline(pipe, tiny_classifier_for(pipe, seed=1), engine="eager")
    with caplog.at_level(logging.INFO, logger="l2s"):
        for side in (32, 48, 32, 64, 32, 48):
            steerer("a cat above a dog", steer=False, num_inference_steps=1, height=side, width=side, progress=False)
    tokens = {side: side * side // 4 for side in (32, 48, 64)}    # 2x2 pixels a token here
    assert [shape[1] for shape in built] == [tokens[32], tokens[48], tokens[64], tokens[48]]   # 32 stayed in use
    assert [dict((k, s) for k, s, _ in shapes)["hidden_states"][1] for _, *shapes in steerer._engines] == [
        tokens[32], tokens[48]]
    dropped = [r.getMessage() for r in caplog.records if "is dropped" in r.getMessage()]
    assert dropped == [f"the compile plain-step engine for latents [1, {tokens[side]}, 4] is dropped (the 2 last used "
                       "are kept)" for side in (48, 64)]
