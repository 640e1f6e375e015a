"""Rows that time steering as users run it: one iteration per mode / layer count, and whole images."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from l2s.steer import custom_schedule, preset_steps

from .report import Row
from .steering_setup import PROMPT
from .timing import (
    Budget,
    Clock,
    ForwardCounter,
    LoopSpan,
    guarded,
    intercept_refinement,
)

PUBLISHED_STEPS = 50      # FLUX.1-dev's default number of denoising steps
STEP_SIZE = 5.0           # the published FLUX step size (used by the one-iteration schedule)
ITERATION_GROUP = "steering iteration (fwd+bwd to latent)"


def one_iteration_schedule():
    """A 1-step schedule with a single refinement iteration: forward, classifier, backward, update."""
    return custom_schedule(1, steered=[0], iterations=1, step_size=STEP_SIZE, name="one iteration")


def iteration_row(steerer, clock: Clock, resolution: int, args, budget: Budget, variant: str,
                  against: str | None, prepare: Callable[[], None] | None = None) -> Row:
    """One steering iteration exactly as the pipeline runs it (its own refinement call)."""
    row = Row(resolution, ITERATION_GROUP, variant, against=against)

    def time_refinement(refine, latents, step, log_prob, schedule, num_relations, diagnostics=None, **kwargs):
        def once():
            return refine(latents, step, log_prob, schedule, num_relations, None, **kwargs)

        before = counter.count
        started = clock.mark()
        once()                                  # the first call compiles where something compiles
        clock.sync()
        cold_s = clock.elapsed_ms(started, clock.mark()) / 1e3
        row.forwards = counter.count - before
        row.ms, row.peak_extra = clock.measure(once, args.warmup, args.repeats)
        if prepare is not None:
            row.note = f"cold compile + first call {cold_s:.1f} s; "
        return refine(latents, step, log_prob, schedule, num_relations, diagnostics, **kwargs)

    def run():
        if prepare is not None:
            prepare()
        with intercept_refinement(steerer, time_refinement):
            result = steerer(PROMPT, num_inference_steps=1, height=resolution, width=resolution,
                             schedule=one_iteration_schedule(), num_images=args.batch_size, progress=False)
        row.note += f"p(target) {result.diagnostics.records[-1].target_probability[0]:.3f}"
        if result.diagnostics.non_finite_events():
            row.note += "; NON-FINITE loss or gradient"
        return row.ms, row.peak_extra

    with ForwardCounter(steerer.pipe.transformer, steerer=steerer) as counter:
        guarded(row, run, budget)
    return row


def iteration_rows(steerers: dict, clock: Clock, resolution: int, args, budget: Budget) -> Iterator[Row]:
    """reference -> fast -> fast with a classifier of the first K blocks (each K of ``--layers``).

    ``steerers``: "reference", "fast" and ("layers", K) -> steerer; every row changes one thing
    from the row it names.
    """
    if "reference" in steerers:
        yield iteration_row(steerers["reference"], clock, resolution, args, budget, "reference mode", None)
    fast = steerers["fast"]
    yield iteration_row(fast, clock, resolution, args, budget, fast_variant(fast),
                        "reference mode" if "reference" in steerers else None)
    for key, steerer in steerers.items():
        if isinstance(key, tuple) and key[0] == "layers":
            yield iteration_row(steerer, clock, resolution, args, budget,
                                f"fast + classifier of the first {key[1]} blocks", fast_variant(fast))


def fast_variant(fast) -> str:
    return f"fast mode (capture {fast.capture_backend})"


# Compiled steering modes of l2s.steer (fast with its blocks under regional torch.compile; and the
# same replayed as CUDA graphs), each compared with the row before it.
COMPILED_MODES = {"fast+compiled": "fast mode", "fast+cudagraphs": "fast+compiled"}


def compiled_iteration_rows(steerers: dict, clock: Clock, resolution: int, args, budget: Budget) -> Iterator[Row]:
    """fast -> fast+compiled -> fast+cudagraphs, for those of the modes ``steerers`` holds."""
    names = {"fast mode": fast_variant(steerers["fast"])}
    for mode, previous in COMPILED_MODES.items():
        if mode not in steerers:
            continue
        steerer = steerers[mode]
        names[mode] = f"{mode} (capture {steerer.capture_backend})"
        yield iteration_row(steerer, clock, resolution, args, budget, names[mode], names.get(previous),
                            prepare=lambda: None)


def image_steps(preset: str, steps_for_50: int) -> int:
    """Denoising steps for ``preset``: its own FLUX.1-dev recommendation, scaled to ``steps_for_50``."""
    own = preset_steps(preset, "flux-dev", PUBLISHED_STEPS)
    return max(1, round(own * steps_for_50 / PUBLISHED_STEPS))


def warm_up(steerer, resolution: int, args) -> None:
    """Compile / record CUDA graphs at this resolution before a timed whole-image run."""
    schedule = custom_schedule(1, steered=[0], iterations=2, step_size=STEP_SIZE)
    steerer(PROMPT, num_inference_steps=1, height=resolution, width=resolution, schedule=schedule,
            num_images=args.batch_size, progress=False)


def image_row(steerer, preset: str, steps: int, resolution: int, clock: Clock, args, budget: Budget,
              against: str | None, name: str | None = None) -> Row:
    """The denoising loop of one steered generation with schedule preset ``preset``."""
    row = Row(resolution, "whole image, denoising loop", f"{name or steerer.mode.name + ' mode'}, {preset} schedule",
              against=against)

    def generate():
        with clock.memory() as mem, LoopSpan(steerer.pipe, clock) as span, \
                ForwardCounter(steerer.pipe.transformer, steerer=steerer) as counter:
            result = steerer(PROMPT, num_inference_steps=steps, height=resolution, width=resolution,
                             schedule=preset, seed=0, num_images=args.batch_size, progress=False)
        ms = span.elapsed_ms()
        row.forwards = counter.count
        records = result.diagnostics.records
        steered = len({r.step for r in records})
        row.note = f"{steps} steps, {len(records)} steering iterations on {steered} steps"
        if records:
            row.note += f", last p(target) {records[-1].target_probability[0]:.3f}"
        if result.diagnostics.non_finite_events():
            row.note += f", {len(result.diagnostics.non_finite_events())} NON-FINITE events"
        return ms, mem["peak_extra"]

    row.ms, row.peak_extra = guarded(row, generate, budget)
    return row


def image_runs(steerers: dict, presets: list[str], reference: bool, compiled: bool) -> list[tuple[str, str]]:
    """(mode, preset) of the whole images: reference mode + published schedule (``reference``),
    fast mode with every preset, then the cheapest preset (``fast`` if given, else the last) with
    each first-K-blocks classifier; with ``compiled``, instead the cheapest preset in each compiled
    mode ``steerers`` holds."""
    cheapest = "fast" if "fast" in presets else presets[-1] if presets else None
    if compiled:
        return [(mode, cheapest) for mode in COMPILED_MODES if mode in steerers and cheapest]
    layered = [(key, cheapest) for key in steerers if isinstance(key, tuple) and key[0] == "layers" and cheapest]
    return ([("reference", "reference")] if reference and "reference" in steerers else []) + [
        ("fast", p) for p in presets] + layered


def image_rows(steerers: dict, clock: Clock, resolution: int, runs: list[tuple[str, str]], args,
               budget: Budget) -> Iterator[Row]:
    """One whole image per (mode, preset) of ``runs`` (:func:`image_runs`), after a warm-up per mode."""
    for mode in dict.fromkeys(mode for mode, _ in runs):
        warm = Row(resolution, "warm-up", _run_name(mode) or f"{mode} mode")
        guarded(warm, lambda mode=mode: warm_up(steerers[mode], resolution, args), budget)
    for mode, preset in runs:
        yield image_row(steerers[mode], preset, image_steps(preset, args.image_steps), resolution, clock, args,
                        budget, _image_against(mode, preset, runs), _run_name(mode))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _run_name(mode) -> str | None:
    """A first-K-blocks steerer's row name (None: a mode's own name)."""
    return f"fast + classifier of the first {mode[1]} blocks" if isinstance(mode, tuple) else None


def _image_against(mode: str, preset: str, runs: list[tuple[str, str]]) -> str | None:
    """The row an image row is compared with: fast/published vs reference/published, other fast
    presets vs fast/published, a compiled mode vs fast with the same preset."""
    if mode in COMPILED_MODES or isinstance(mode, tuple):       # compiled, or first-K-blocks classifier
        return f"fast mode, {preset} schedule"
    if mode == "fast" and preset == "reference":
        return "reference mode, reference schedule" if ("reference", "reference") in runs else None
    if mode == "fast" and ("fast", "reference") in runs:
        return "fast mode, reference schedule"
    return None
