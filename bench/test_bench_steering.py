"""CPU benchmarks of steering on tiny random models (pytest-benchmark): a regression gate for the fast path.

Four groups, each timing code the pipelines run (nothing re-implemented here):

* ``classifier``: the relation classifier's forward + backward to its maps, eager fp32 vs
  :func:`l2s.pipelines.compile_classifier` (a small custom config, so compiling stays short);
* ``iteration``: one steering iteration (transformer forward with map capture, classifier, backward
  to the latent, update) in ``reference``, ``fast`` and ``fast+compiled`` mode, and ``fast`` on the
  stock forward with capture processors (what ``fast`` ran before l2s's FLUX steered forward): the
  pipeline's own refinement call on a 1-step, 1-iteration schedule, timed through its ``refine`` hook;
* ``iteration`` also times the attention floor: the fused attention forward + backward that an exact
  fast iteration cannot skip (every block's joint attention before the last captured layer, every
  captured layer's maps), alone, at the same shapes;
* ``capture``: the same fast iteration with each capture backend ("sdpa", "native"): the
  measurement behind ``l2s.steer.DEFAULT_CAPTURE_BACKEND``;
* ``generation``: a whole steered generation per schedule preset in fast mode, plus the published
  schedule in reference and fast+compiled mode;
* ``batch``: the same four steered images (four prompts, four seeds) made one per call, two per
  call and four in one call, fast mode, published schedule: what batching saves per image.

``extra_info`` records transformer forwards executed, the last target probability and, for the
compiled mode, the cold compile (first forward + backward) in seconds. Run
``python -m pytest bench/test_bench_steering.py`` (a few minutes: the first run compiles; later
runs hit torch's compile cache); see bench/README.md for the regression gate.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from flux_bench.micro import classifier_gradient
from flux_bench.steering import image_steps, one_iteration_schedule
from flux_bench.timing import ForwardCounter, intercept_refinement
from l2s.classifier import ClassifierConfig, RelationClassifier
from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.ops import (
    selected_text_attention,
    selected_text_attention_reference,
    selector_width,
    token_group_selector,
)
from l2s.pipelines import SteeringPipeline, compile_classifier, wrap_pipeline
from l2s.steer import MODES

PROMPT = "a cat above a dog"
SIDE = 32             # pixels: the tiny VAE does not downsample, so a 16x16 token grid (+ 512 T5 tokens)
STEPS_FOR_50 = 8      # denoising steps standing in for FLUX.1-dev's 50 (fast preset: 28/50 of it)
CLASSIFIER_ROUNDS = 20
ITERATION_ROUNDS = 10
GENERATION_ROUNDS = 2

# Small enough to compile in under a minute on 2 cores, with the real module structure.
BENCH_CLASSIFIER = ClassifierConfig(
    channels=48, timesteps=(5, 10), num_timesteps=50, d_model=64, extractor_layers=2,
    extractor_heads=4, extractor_ff=128, pool_heads=4, head_layers=2, head_heads=4, head_ff=128,
    fc_dims=(64, 32), model_family="custom")

# ``fast`` on the stock FLUX forward with capture processors: isolates the steered forward's share.
STOCK_FORWARD = dataclasses.replace(MODES["fast"], name="fast-stock-forward", steered_forward=False)
ITERATION_MODES = {"reference": "reference", "fast-stock-forward": STOCK_FORWARD, "fast": "fast",
                   "fast+compiled": "fast+compiled"}
GENERATIONS = [("fast", preset) for preset in ("reference", "front-loaded", "early-exit", "fast")]
GENERATIONS += [("reference", "reference"), ("fast+compiled", "reference")]
# Four prompts with two objects and a relation each, and their seeds: every batch size makes these.
BATCH_PROMPTS = ("a cat above a dog", "a dog to the left of a chair", "a chair below a lamp",
                 "a lamp to the right of a cat")
BATCH_SIZES = (1, 2, 4)


def make_responsive(classifier: RelationClassifier) -> RelationClassifier:
    """Amplify a random classifier so steering moves it the way it moves a trained one.

    A random classifier reads maps of ~1/T per pixel and answers near-uniformly whatever the latent;
    with its input gain and output temperature raised, gradient steps push p(target) past the
    early-exit threshold on some steps, so the early-exit presets stop early as on real prompts.
    """
    with torch.no_grad():
        classifier.object_extractor.input_projection.weight.mul_(1000.0)
        classifier.relation_classifier.fc[-1].weight.mul_(10.0)
    return classifier


@pytest.fixture(scope="module")
def tiny_dev():
    """A FLUX-dev-like tiny pipeline (2 double + 2 single blocks) and a responsive classifier."""
    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=2, guidance_embeds=True, seed=0)
    return pipe, make_responsive(tiny_classifier_for(pipe, seed=1))


def make_steerer(tiny_dev, mode: str, **options) -> SteeringPipeline:
    pipe, classifier = tiny_dev
    return wrap_pipeline(pipe, copy.deepcopy(classifier), mode=mode, **options)


# ---- classifier -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["eager-fp32", "compiled"])
def test_classifier_forward_backward(benchmark, variant):
    benchmark.group = "classifier"
    classifier = RelationClassifier(BENCH_CLASSIFIER).eval().requires_grad_(False)
    maps = torch.rand(1, 2, BENCH_CLASSIFIER.channels, 16, 16)
    maps = maps / maps.sum(dim=(-2, -1), keepdim=True)
    steps = torch.tensor([BENCH_CLASSIFIER.timesteps[0]])
    expected = classifier_gradient(classifier, maps, steps, 0)
    call = classifier
    if variant == "compiled":
        call = compile_classifier(copy.deepcopy(classifier), torch.device("cpu"))
        started = time.perf_counter()
        classifier_gradient(call, maps, steps, 0)             # compiles outside the timed rounds
        benchmark.extra_info["compile_s"] = round(time.perf_counter() - started, 1)

    grad = benchmark.pedantic(classifier_gradient, args=(call, maps, steps, 0),
                              rounds=CLASSIFIER_ROUNDS, warmup_rounds=2)

    assert grad.shape == maps.shape and grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-9)   # compiled = same gradient


# ---- one steering iteration -------------------------------------------------------------------

def time_one_iteration(benchmark, steerer: SteeringPipeline) -> None:
    """Benchmark the pipeline's own refinement call on a 1-iteration schedule, then check it."""
    calls = []

    def time_refinement(refine, latents, step, log_prob, schedule, num_relations, diagnostics=None):
        def iteration():
            calls.append(step)
            return refine(latents, step, log_prob, schedule, num_relations, diagnostics)

        started = time.perf_counter()
        with ForwardCounter(steerer.pipe.transformer, steerer=steerer) as counter:
            iteration()                                  # the compiled mode compiles here
        benchmark.extra_info["first_call_s"] = round(time.perf_counter() - started, 2)
        benchmark.extra_info["forwards"] = counter.count
        return benchmark.pedantic(iteration, rounds=ITERATION_ROUNDS, warmup_rounds=1)

    with intercept_refinement(steerer, time_refinement):
        result = steerer(PROMPT, num_inference_steps=1, height=SIDE, width=SIDE,
                         schedule=one_iteration_schedule(), progress=False)

    records = result.diagnostics.records
    benchmark.extra_info["target_probability"] = records[-1].target_probability[0]
    if "steering_compile_s" in result.timings:
        benchmark.extra_info["compile_s"] = round(result.timings["steering_compile_s"], 1)
    assert benchmark.extra_info["forwards"] == 1      # one (possibly cut) forward per iteration
    assert len(records) == len(calls) >= 2            # every timed call was one real iteration
    assert all(r.updated and not r.non_finite for r in records)
    first = records[0].target_probability[0]          # same latent in, same probability out
    assert all(r.target_probability[0] == pytest.approx(first, rel=1e-5) for r in records)


@pytest.mark.parametrize("mode", list(ITERATION_MODES))
def test_steered_iteration(benchmark, mode, tiny_dev):
    benchmark.group = "iteration"
    steerer = make_steerer(tiny_dev, ITERATION_MODES[mode])
    time_one_iteration(benchmark, steerer)
    runs_steered_forward = steerer.objective._steered is not None
    assert runs_steered_forward == (mode not in ("reference", "fast-stock-forward"))


def test_attention_floor(benchmark, tiny_dev):
    """The fused attention an exact fast iteration cannot skip, alone: forward + backward of the joint
    attention of each block before the last captured layer and of each captured layer's maps, at
    the tiny model's shapes (selector padded as the capture pads it). Its time / the reference
    iteration's is the best ratio any exact fast path could reach with these kernels."""
    benchmark.group = "iteration"
    attn = tiny_dev[0].transformer.transformer_blocks[0].attn
    heads, dim, text, image = attn.heads, attn.head_dim, 512, (SIDE // 2) ** 2
    layers = len(tiny_dev[0].transformer.transformer_blocks) + len(tiny_dev[0].transformer.single_transformer_blocks)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, text + image, dim, generator=generator).requires_grad_(True) for _ in range(3))
    selector = token_group_selector([[2], [5]], text, selector_width(2, dim, q.device))

    def attention():
        joint = maps = None
        for _ in range(layers - 1):                        # joint attention: every block before the last
            joint = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), (q, k, v))
        for _ in range(layers):                            # every layer's maps
            maps = selected_text_attention(q[:, :, text:], k[:, :, :text], selector)
            maps = (maps.detach(), *torch.autograd.grad(maps.sum(), (q, k)))
        return joint, maps

    joint, maps = benchmark.pedantic(attention, rounds=ITERATION_ROUNDS, warmup_rounds=1)
    benchmark.extra_info.update(joint_layers=layers - 1, map_layers=layers, sequence=text + image)
    # What was timed computes what it stands for: the explicit formulas' values and gradients (fp32).
    expected_joint, expected_maps = explicit_attention_floor(q, k, v, selector, text)
    for got, expected in zip((*joint, *maps), (*expected_joint, *expected_maps)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def explicit_attention_floor(q, k, v, selector, text: int) -> tuple[tuple, tuple]:
    """The attention floor's kernels by their explicit formulas: (joint attention's gradients to
    q, k, v), (the selected maps, their gradients to q, k)."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    joint = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
    joint_grads = torch.autograd.grad(joint.sum(), (q, k, v))
    maps = selected_text_attention_reference(q[:, :, text:], k[:, :, :text], selector)
    return joint_grads, (maps.detach(), *torch.autograd.grad(maps.sum(), (q, k)))


# The op of the "native" capture backend (forward, backward); the "sdpa" backend runs neither.
NATIVE_OPS = {"l2s::selected_text_softmax", "l2s::selected_text_softmax_backward"}


@pytest.mark.parametrize("backend", ["sdpa", "native"])
def test_capture_backend_iteration(benchmark, backend, tiny_dev):
    benchmark.group = "capture"
    steerer = make_steerer(tiny_dev, "fast", capture_backend=backend)
    time_one_iteration(benchmark, steerer)
    # The named backend is the one that ran, and both backends steer alike (fp32 tolerance).
    value, gradient, ops = evaluate_once(steerer)
    assert (NATIVE_OPS <= ops) if backend == "native" else not (NATIVE_OPS & ops), sorted(ops)
    other = make_steerer(tiny_dev, "fast", capture_backend="native" if backend == "sdpa" else "sdpa")
    other_value, other_gradient, _ = evaluate_once(other)
    torch.testing.assert_close(value, other_value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gradient, other_gradient, rtol=1e-4, atol=1e-5)
    assert gradient.abs().sum() > 0


class OpNames(TorchDispatchMode):
    """Records the name of every op that runs under it (``l2s::selected_text_softmax``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._schema.name)
        return func(*args, **(kwargs or {}))


def evaluate_once(steerer: SteeringPipeline) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
    """log p(target) at step 0 of a seeded generation, its gradient to the latent, and the ops that
    ran for them: the pipeline's own evaluation, taken from inside its refinement call."""
    found = {}

    def evaluate(refine, latents, step, log_prob, schedule, num_relations, diagnostics=None):
        z = latents.detach().clone().requires_grad_(True)
        with torch.enable_grad(), OpNames() as ops:      # the pipeline generates under no_grad
            value = log_prob(z, 0)
            (gradient,) = torch.autograd.grad(value.sum(), z)
        found.update(value=value.detach(), gradient=gradient, ops=ops.names)
        return refine(latents, step, log_prob, schedule, num_relations, diagnostics)

    with intercept_refinement(steerer, evaluate):
        steerer(PROMPT, num_inference_steps=1, height=SIDE, width=SIDE, schedule=one_iteration_schedule(),
                seed=0, progress=False)
    return found["value"], found["gradient"], found["ops"]


# ---- whole generations --------------------------------------------------------------------------

@pytest.mark.parametrize("mode, preset", GENERATIONS, ids=[f"{m}-mode-{p}" for m, p in GENERATIONS])
def test_steered_generation(benchmark, mode, preset, tiny_dev):
    benchmark.group = "generation"
    steerer = make_steerer(tiny_dev, mode)
    steps = image_steps(preset, STEPS_FOR_50)

    with ForwardCounter(steerer.pipe.transformer, steerer=steerer) as counter:
        def generate():
            counter.reset()
            return steerer(PROMPT, num_inference_steps=steps, height=SIDE, width=SIDE,
                           schedule=preset, seed=0, progress=False)

        result = benchmark.pedantic(generate, rounds=GENERATION_ROUNDS, warmup_rounds=1)

    records = result.diagnostics.records
    benchmark.extra_info.update(
        steps=steps, forwards=counter.count, steering_forwards=len(records),
        target_probability=records[-1].target_probability[0])
    schedule = result.schedule
    assert schedule.name == preset and schedule.num_steps == steps
    assert counter.count == len(records) + steps   # one forward per loss evaluation + one per step
    if schedule.exit_probability is None:          # published loss targets: never reached here
        assert len(records) == schedule.max_forwards()
    else:                                          # an exit costs no extra pass (see tests/pipelines)
        assert len(records) <= schedule.max_forwards()
    assert not result.diagnostics.non_finite_events()


# ---- batches ------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_steered_batch(benchmark, batch, tiny_dev):
    """The four prompts of ``BATCH_PROMPTS`` in calls of ``batch`` images each: every row makes the
    same four images, so the medians compare per-image costs."""
    benchmark.group = "batch"
    steerer = make_steerer(tiny_dev, "fast")
    calls = [range(first, first + batch) for first in range(0, len(BATCH_PROMPTS), batch)]

    def generate():
        return [steerer([BATCH_PROMPTS[i] for i in call], seed=list(call), num_inference_steps=STEPS_FOR_50,
                        height=SIDE, width=SIDE, schedule="reference", progress=False) for call in calls]

    results = benchmark.pedantic(generate, rounds=GENERATION_ROUNDS, warmup_rounds=1)
    images = [image for result in results for image in result.images]
    benchmark.extra_info.update(batch=batch, calls=len(calls), images=len(images))
    assert len(images) == len(BATCH_PROMPTS)
    assert all(not result.diagnostics.non_finite_events() for result in results)
