"""Steered generation on diffusers pipelines: the model-independent part.

The data path reads top-down in :meth:`SteeringPipeline.__call__`: plan the prompt (relations ->
token groups -> classes), then the family's denoising loop (:mod:`.flux`,
:mod:`.stable_diffusion`), which on steered steps calls :meth:`SteeringPipeline.steer_step`:
the objective at that step (capture -> classify -> log p) refined by ``l2s.steer.refine_latents``.

The loops follow diffusers' own ``FluxPipeline`` / ``StableDiffusionPipeline`` loops (same
components, scheduler calls and latent packing), with the steering step inserted; the pipeline's
callback runs under ``no_grad``, so steering needs its own loop.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from l2s.classifier import RelationClassifier
from l2s.devices import check_device
from l2s.errors import ClassifierMismatchError, UsageError
from l2s.steer import (
    DEFAULT_CAPTURE_BACKEND,
    BatchPlan,
    ExecutionMode,
    Schedule,
    SteeringDiagnostics,
    SteeringObjective,
    SteeringPlan,
    execution_mode,
    parsed_from_relations,
    preset_steps,
    refine_latents,
    relations_per_prompt,
    schedule_preset,
    steering_outcome,
    validate_step_size,
)

from .arguments import (
    announce_steering,
    call_warnings,
    check_base_family,
    check_call,
    check_classifier_argument,
    checked_capture_backend,
    checked_schedule,
    image_batch,
)
from .guards import one_call_at_a_time, refuse_inference_mode
from .loading import check_torch_dtype, load_diffusers_pipeline, wrap_pipeline
from .results import SteeringResult


def _outcomes(plan, plans: list | None, schedule, diagnostics: SteeringDiagnostics, steer: bool):
    """(the call's outcome, the outcome of each image of a batch or None): each image's from its own
    records; the call's is the first image's, or, without a batch, the plan's."""
    outcomes = None if plans is None else [
        steering_outcome(p, schedule, diagnostics.for_image(i) if p.steered else SteeringDiagnostics(), steer)
        for i, p in enumerate(plans)]
    return (outcomes[0] if outcomes else steering_outcome(plan, schedule, diagnostics, steer)), outcomes


def _relations_per_image(prompt: str | list[str], relations, images: int) -> list:
    """A call's ``relations`` for each of its ``images`` (None where the parser's apply): one list
    per prompt of a list (the same text may come with other relations), or one for every seed."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    per_prompt = relations_per_prompt(relations, len(prompts))
    return per_prompt * images if isinstance(prompt, str) else per_prompt


def seeded_generators(seed: int | list[int]) -> torch.Generator | list[torch.Generator]:
    """CPU generators for the initial noise: one seed's for all images, or one per image (diffusers
    then draws each image's noise alone, so it equals that seed's single-image noise)."""
    if isinstance(seed, (list, tuple)):
        return [torch.Generator(device="cpu").manual_seed(s) for s in seed]
    return torch.Generator(device="cpu").manual_seed(seed)


def _checked_step_size(step_size: float) -> float:
    try:
        return validate_step_size(step_size)
    except ValueError as e:
        raise UsageError(str(e)) from None


class SteeringPipeline:
    """Wraps a diffusers pipeline and a relation classifier; subclasses supply the model loop.

    ``objective`` (an ``l2s.steer.SteeringObjective``) computes log p(target relation) of a
    latent; ``refine`` is the refinement loop run on it at each steered step
    (``l2s.steer.refine_latents``); an instance may replace it to observe or time those steps.
    """

    family: str
    denoiser_attr: str
    refine = staticmethod(refine_latents)

    def __init__(self, pipe, classifier: RelationClassifier, schedule: Schedule | None = None,
                 mode: str = "fast", step_size: float | None = None,
                 capture_backend: str = DEFAULT_CAPTURE_BACKEND):
        self.pipe = pipe
        check_classifier_argument(classifier)
        self.objective = SteeringObjective(self.denoiser, classifier, mode,
                                           checked_capture_backend(capture_backend, mode))
        self.schedule = checked_schedule(schedule)
        # Step size of the named schedules (presets); None: the family's published one.
        self.step_size = None if step_size is None else _checked_step_size(step_size)
        # Steering differentiates w.r.t. the latent only: freeze every weight.
        for name in ("transformer", "unet", "text_encoder", "text_encoder_2", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
        # prompt -> the relations to steer instead of the parser's ((subject, relation, object)
        # items, see ``l2s.steer.parsed_from_relations``), or None for the parser's.
        self.given_relations: Callable[[str], list | None] | None = None
        self._engines: OrderedDict = OrderedDict()   # plain-step engines by input shapes, last used last
        self.engine_build_seconds = 0.0       # time spent building them, over this pipeline's life
        self._last_engine = None
        self._steering_seconds = 0.0          # time in steered steps during the current call

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def accepts(cls, pipe) -> bool:
        """Whether ``pipe`` (a diffusers pipeline) is of this model family."""
        return False

    @classmethod
    def wrap(cls, pipe, classifier: RelationClassifier, schedule: Schedule | None = None,
             mode: str = "fast", step_size: float | None = None,
             capture_backend: str = DEFAULT_CAPTURE_BACKEND, **options) -> "SteeringPipeline":
        """This family's wrapper of ``pipe`` (see :func:`wrap_pipeline`); no extra options here
        but ``engine`` "auto" or "eager" (what runs its plain steps anyway)."""
        if options.get("engine", "auto") in ("auto", "eager"):
            options.pop("engine", None)
        if options:
            raise UsageError(f"options {sorted(options)} apply to FLUX pipelines only")
        return cls(pipe, classifier, schedule, mode, step_size, capture_backend)

    @classmethod
    def from_pretrained(cls, model_path: str | Path, classifier: RelationClassifier | str | Path,
                        torch_dtype: torch.dtype | None = None, device: str | None = None,
                        schedule: Schedule | None = None, mode: str = "fast",
                        step_size: float | None = None,
                        capture_backend: str = DEFAULT_CAPTURE_BACKEND, **flux_options) -> "SteeringPipeline":
        """Load a diffusers pipeline from a local directory (or a hub id in the local cache, never
        downloaded) and wrap it (``flux_options``: as :func:`wrap_pipeline`'s, e.g. ``engine="compile"``).
        A classifier that does not fit the model is refused here (``ClassifierMismatchError``)."""
        if device is not None:
            check_device(device)     # before minutes of loading
        check_torch_dtype(torch_dtype)
        if not isinstance(classifier, RelationClassifier):
            classifier = RelationClassifier.load(classifier)   # a wrong path fails before the model loads
        pipe = load_diffusers_pipeline(model_path, torch_dtype=torch_dtype)
        if device:
            pipe.to(device)
        steerer = wrap_pipeline(pipe, classifier, schedule, mode, step_size=step_size,
                                capture_backend=capture_backend, **flux_options)
        steerer.check_classifier()
        return steerer

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_attr)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def classifier(self) -> RelationClassifier:
        return self.objective.classifier

    @property
    def mode(self) -> ExecutionMode:
        """How steered iterations run (``l2s.steer.MODES``); every mode steers alike."""
        return self.objective.mode

    @mode.setter
    def mode(self, mode: str | ExecutionMode) -> None:
        if execution_mode(mode) == self.mode:
            return                          # keep what the current objective compiled
        self._check_mode(execution_mode(mode))
        checked_capture_backend(self.capture_backend, mode)
        self.objective = SteeringObjective(self.denoiser, self.classifier, mode, self.capture_backend)

    def _check_mode(self, mode: ExecutionMode) -> None:
        """What a family refuses before ``mode`` replaces the current one (nothing here)."""

    @property
    def capture_backend(self) -> str:
        """How the fast mode computes maps: "sdpa" or "native" (see ``l2s.steer.SteeringObjective``)."""
        return self.objective.capture_backend

    @capture_backend.setter
    def capture_backend(self, backend: str) -> None:
        self.objective.capture_backend = checked_capture_backend(backend, self.mode)

    @property
    def capture_backend_in_use(self) -> str | None:
        """What steered passes compute maps with: ``capture_backend``, or None in the reference mode
        (its explicit attention, as published); what reports record."""
        return self.objective.backend_in_use

    def map_channels(self) -> int:
        """Maps per object this model provides (captured layers x heads)."""
        return self.objective.map_channels()

    def classify(self, maps: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Classifier logits (float32), compiled on first use where the mode asks for it."""
        return self.objective.classify(maps, steps)

    # ---- shared data path ---------------------------------------------------------------
    def plan(self, prompt: str, relations: list | None = None) -> SteeringPlan:
        """Parse the prompt (or take ``relations``, else :attr:`given_relations`' relations for it),
        map each object phrase to tokens, and check the classifier fits."""
        tokenizer, max_length = self.map_tokenizer()
        names = self.classifier.config.class_names
        given = relations
        if given is None and self.given_relations is not None:
            given = self.given_relations(prompt)
        if given is None:
            return SteeringPlan.from_prompt(prompt, tokenizer, max_length, names)
        return SteeringPlan.from_parsed(parsed_from_relations(prompt, given), tokenizer, max_length, names)

    def check_arguments(self, prompt: str, *, num_inference_steps: int | None = None, height: int | None = None,
                        width: int | None = None, guidance_scale: float | None = None,
                        schedule: Schedule | str | None = None, seed: int = 0, steer: bool = True) -> None:
        """Refuse now what a call with these arguments would refuse (its options, the schedule, the
        size, a classifier that does not fit): a run checks before it claims a folder."""
        check_call(self, prompt, num_inference_steps=num_inference_steps, height=height, width=width,
                   guidance_scale=guidance_scale, seed=seed, num_images=1, steer=steer, schedule=schedule,
                   latents=None, progress=False)
        self._resolve_schedule(schedule, num_inference_steps)
        if steer:
            self.check_classifier()

    def sampling_in_effect(self, *, num_inference_steps: int | None = None, height: int | None = None,
                           width: int | None = None, guidance_scale: float | None = None,
                           schedule: Schedule | str | None = None) -> dict:
        """What a call with these arguments samples with, the model's defaults in place of None:
        its report's ``sampling``, and the schedule a steered image of it follows (``Schedule.to_json``)."""
        resolved, steps = self._resolve_schedule(schedule, num_inference_steps)
        return {"sampling": self._sampling(steps, height, width, guidance_scale), "schedule": resolved.to_json()}

    def _sampling(self, steps: int, height: int | None, width: int | None, guidance_scale: float | None) -> dict:
        # What sampled the images: a rerun with it makes them again.
        return {"num_inference_steps": steps, **self.resolved_sampling(height, width, guidance_scale),
                **self.sampling_options()}

    def check_classifier(self) -> None:
        check_base_family(self.pipe, self.classifier)
        cfg = self.classifier.config
        channels = self.map_channels()
        if cfg.channels != channels:
            raise ClassifierMismatchError(
                f"classifier expects {cfg.channels} maps per object but this model provides {channels} "
                "(layers x heads); use a classifier trained for this model")

    def steer_step(self, latents: torch.Tensor, step: int, plan: SteeringPlan | BatchPlan, schedule: Schedule,
                   run_denoiser, text_len: int, latent_hw: tuple[int, int],
                   diagnostics: SteeringDiagnostics) -> torch.Tensor:
        """Refine ``latents`` at a steered ``step``: capture -> classify -> gradient step(s).

        The capture processors are on the model only for the duration of this step, so plain
        steps run the stock model (or an engine built from it).
        """
        started = time.perf_counter()
        with self.objective.at_step(plan, step, run_denoiser, text_len, latent_hw) as log_prob:
            counts = plan.counts if isinstance(plan, BatchPlan) else len(plan.pairs)
            latents = self.refine(latents, step, log_prob, schedule, counts, diagnostics)
        self._steering_seconds += time.perf_counter() - started
        return latents

    def _steer_if_scheduled(self, latents: torch.Tensor, step: int, plan: SteeringPlan,
                            schedule: Schedule | None, run_denoiser, text_len: int,
                            latent_hw: tuple[int, int], diagnostics: SteeringDiagnostics,
                            bar) -> torch.Tensor:
        """``steer_step`` on a steered step (showing the last target probability), else ``latents``."""
        if schedule is None or not schedule.is_steered(step):
            return latents
        latents = self.steer_step(latents, step, plan, schedule, run_denoiser, text_len, latent_hw,
                                  diagnostics)
        last = diagnostics.for_step(step)
        if last:
            bar.set_postfix(p=f"{min(last[-1].target_probability):.3f}")
        return latents

    def warm_up(self, prompt: str | list[str], steer: bool = False, **kwargs) -> None:
        """One call thrown away: the one-time costs of a first call (allocations, kernel choices,
        lazy imports; steered: the capture, the classifier's and compiled modes' first passes) that
        would otherwise be charged to the first timed images. Steered, it runs the cheap "fast" preset.
        ``prompt`` and ``seed`` may be the first batch's lists: its first image warms up, unless calls
        build per input shape (compiled steering, a plain-step engine): then nothing does, since one
        image would build a shape no call uses and the first batch builds its own (its time includes it)."""
        if isinstance(prompt, list):
            if self._builds_per_shape(steer):
                return
            seed = kwargs.get("seed", 0)
            prompt, kwargs = prompt[0], {**kwargs, "seed": seed[0] if isinstance(seed, list) else seed}
        self(prompt, steer=steer, **{**kwargs, "progress": False, "schedule": "fast" if steer else None})

    def _builds_per_shape(self, steer: bool) -> bool:
        """Whether a call compiles or builds something for its batch's shape."""
        engine = getattr(self, "engine_kind", "eager") not in ("auto", "eager")
        return engine or (steer and self.mode.compile_steering)

    @one_call_at_a_time
    def __call__(self, prompt: str | list[str], *, num_inference_steps: int | None = None,
                 height: int | None = None, width: int | None = None,
                 guidance_scale: float | None = None, seed: int | list[int] = 0, num_images: int = 1,
                 steer: bool = True, schedule: Schedule | str | None = None,
                 latents: torch.Tensor | None = None, progress: bool = True,
                 relations: list | None = None) -> SteeringResult:
        """Generate ``num_images`` images of ``prompt``; steered when it has a directional relation.

        A list of prompts and/or seeds makes one image per entry (one seed for every prompt, or one
        per prompt), steered together in one batch: each image follows its own prompt's plan,
        exits on its own, and comes out as a call for it alone with its seed would make it.
        ``schedule`` is a :class:`Schedule` or a preset name (``l2s.steer.PRESETS``; default the
        published "reference"); a preset also picks the number of steps unless given, and takes
        the pipeline's ``step_size`` when one was set (a :class:`Schedule` keeps its own).
        ``latents`` replaces the seeded initial noise (in the pipeline's own latent layout).
        ``relations`` (``[("dog", "left of", "cat")]``, one list for all prompts or one per prompt;
        ``[]`` steers nothing, ``None`` the parser's) replaces the parser's relations.
        """
        t0 = time.perf_counter()
        check_call(self, prompt, num_inference_steps=num_inference_steps, height=height, width=width,
                   guidance_scale=guidance_scale, seed=seed, num_images=num_images, steer=steer,
                   schedule=schedule, latents=latents, progress=progress)
        self._steering_seconds, compiled_before = 0.0, self.objective.compile_seconds
        built_before = self.engine_build_seconds
        batch, plans, plan = self._call_plans(prompt, seed, num_images, relations)
        schedule, steps = self._resolve_schedule(schedule, num_inference_steps)
        steered = steer and plan.steered
        if not steered:
            schedule = None
        doubts = self._announce_steering(plans or [plan], height, width) if steered else []
        diagnostics = SteeringDiagnostics()
        images = self.generate(prompt if batch is None else [p for p, _ in batch], plan, steps=steps,
                               height=height, width=width, guidance_scale=guidance_scale,
                               seed=seed if batch is None else [s for _, s in batch],
                               num_images=num_images if batch is None else len(batch),
                               schedule=schedule, diagnostics=diagnostics, latents=latents, progress=progress)
        timings = self._call_timings(time.perf_counter() - t0, compiled_before, built_before)
        engine = self._last_engine
        outcome, outcomes = _outcomes(plan, plans, schedule, diagnostics, steer)
        sampling = self._sampling(steps, height, width, guidance_scale)
        return SteeringResult(images=images, plan=plan if plans is None else plans[0], schedule=schedule,
                              diagnostics=diagnostics, timings=timings,
                              engine={"name": engine.name, "reason": engine.reason} if engine else None,
                              sampling=sampling,
                              execution={"mode": self.mode.name, "capture_backend": self.capture_backend_in_use},
                              outcome=outcome, plans=plans, outcomes=outcomes, warnings=doubts)

    def _call_plans(self, prompt, seed, num_images: int, relations):
        """(the call's (prompt, seed) per image, or None for one prompt's ``num_images``; the plan of
        each image of such a batch, or None; the call's plan: the one prompt's, or the batch's)."""
        batch = image_batch(prompt, seed, num_images)
        given = _relations_per_image(prompt, relations, 1 if batch is None else len(batch))
        plans = None if batch is None else self._plans([p for p, _ in batch], given)
        plan = self.plan(prompt, given[0]) if batch is None else BatchPlan(plans)
        return batch, plans, plan

    def _announce_steering(self, plans: list, height: int | None, width: int | None) -> list[str]:
        """Say what each steered prompt steers; the call's own warnings, once however many it steers."""
        refuse_inference_mode()
        doubts = call_warnings(self, height, width)
        for plan in plans:
            if plan.steered:      # an unsteered prompt of the batch has nothing to doubt
                announce_steering(self, plan, doubts)
        return doubts

    def _call_timings(self, total: float, compiled_before: float, built_before: float) -> dict:
        """A call's seconds: in all, steering, and any cold compile or engine build it ran."""
        timings = {"total": total, "steering": self._steering_seconds}
        if self.objective.compile_seconds > compiled_before:   # a cold compile ran in this call
            timings["steering_compile_s"] = self.objective.compile_seconds - compiled_before
        if self.engine_build_seconds > built_before:          # a plain-step engine was built in this call
            timings["plain_engine_build_s"] = self.engine_build_seconds - built_before
        return timings

    def _plans(self, prompts: list[str], given: list) -> list[SteeringPlan]:
        """One plan per image (a prompt met again with the same relations is planned once); ``given``:
        each image's relations."""
        made: list[tuple[str, object, SteeringPlan]] = []
        plans = []
        for text, relations in zip(prompts, given):
            found = next((plan for t, r, plan in made if t == text and r == relations), None)
            if found is None:
                found = self.plan(text, relations)
                made.append((text, relations, found))
            plans.append(found)
        return plans

    def _resolve_schedule(self, schedule: Schedule | str | None,
                          num_inference_steps: int | None) -> tuple[Schedule, int]:
        """The schedule to use (a preset name resolved for this family) and the step count."""
        schedule = schedule or self.schedule or "reference"
        if isinstance(schedule, str):
            try:
                steps = num_inference_steps or preset_steps(schedule, self.family, self.default_steps())
                schedule = schedule_preset(schedule, self.family, steps, self.step_size)
            except ValueError as e:
                raise UsageError(str(e)) from None
        steps = num_inference_steps or schedule.num_steps
        if schedule.num_steps != steps:
            raise UsageError(f"schedule {schedule.name!r} covers {schedule.num_steps} steps, "
                             f"generation uses {steps}")
        return schedule, steps

    def _progress(self, total: int, enabled: bool):
        return tqdm(total=total, disable=not enabled, desc=f"l2s {self.label}", leave=False)

    @property
    def label(self) -> str:
        """How progress bars name this model."""
        return self.family

    # ---- per-model parts ------------------------------------------------------------------
    def sampling_options(self) -> dict:
        """Sampling options of this wrapper beyond the call's arguments (recorded in reports)."""
        return {}

    def resolved_sampling(self, height: int | None, width: int | None, guidance_scale: float | None) -> dict:
        """A call's ``height``, ``width`` and ``guidance_scale`` with this model's defaults in place of
        None, as it samples them (recorded in reports: a rerun with them makes the same image)."""
        return {"height": height, "width": width, "guidance_scale": guidance_scale}

    def map_tokenizer(self):
        raise NotImplementedError

    def default_steps(self) -> int:
        raise NotImplementedError

    def generate(self, prompt, plan, **kwargs):
        raise NotImplementedError
