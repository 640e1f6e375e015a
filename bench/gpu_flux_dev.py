#!/usr/bin/env python
"""What steering costs on FLUX.1-dev: the real transformer architecture with random weights, on a GPU.

One-shot: runs from a plain checkout on any machine with a CUDA GPU whose torch / transformers /
triton have only diffusers added (no spaCy: the steered prompt's plan is given, not parsed; no build of
``l2s_fast``: the GPU path of ``l2s.ops`` is Triton). Every row is printed and appended to
``<out>/<name>.md`` and ``.jsonl`` as soon as it is measured, so a run cut short keeps its rows.

Rows, each changing one thing from the row it names (speed-up = that row's time / this one's):

* transformer forward (no grad): eager -> its repeated blocks compiled (regional ``torch.compile``);
* one layer's map capture, forward + backward: explicit softmax -> SDPA selector / native op;
* one steering iteration (forward with capture, classifier, backward to the latent, update) as the
  pipeline runs it: reference mode -> fast mode -> fast with a classifier of the first K blocks
  (``--layers``: the forward stops after block K, so the backward is short) -> fast with compiled
  blocks;
* the classifier's forward + backward to its maps: eager fp32 -> bf16 -> compiled -> CUDA graphs;
* whole images per schedule: reference mode + published schedule, fast mode with each preset;
* images per second against batch size (``--throughput-batches``): one call of B images with B
  seeds, plain and steered (fast mode, ``fast`` preset), the denoising loop's time per image vs the
  first batch size given.

Exit status: 2 for a bad option (one line), 1 when any row failed, else 0 (rows the time budget
cut are not failures).

The classifier has the published FLUX.1-dev sizes and random weights, plus a calibrated term that
makes p(target) respond to steering (``flux_bench/steering_setup.py``), so early exit behaves as
with a trained classifier. ``--quick`` is a short run, compiles included, under a time budget and
a hard limit; ``--tiny`` runs the same code on the CPU with a tiny architecture.

Usage (repository root; the script imports its own checkout's ``l2s``)::

    python bench/gpu_flux_dev.py --quick            # on a CUDA GPU: report in bench/results/
    python bench/gpu_flux_dev.py --tiny             # CPU smoke run, report in out/gpu_flux_dev/
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported: never download

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for _path in (str(HERE), str(REPO_ROOT)):     # its own helpers and its own checkout's l2s come first
    if _path not in sys.path[:2]:
        sys.path.insert(0, _path)

# Imported after the path set-up above, on purpose (E402).
import torch
from flux_bench.arch import FLUX_DEV, TINY, build_flux_pipeline
from flux_bench.micro import (
    capture_rows,
    classifier_gradient,
    classifier_rows,
    forward_rows,
)
from flux_bench.options import DTYPES, header, parse_args, report_path
from flux_bench.report import Row, RowWriter
from flux_bench.steering import (
    STEP_SIZE,
    COMPILED_MODES,
    compiled_iteration_rows,
    image_rows,
    image_runs,
    image_steps,
    iteration_rows,
    one_iteration_schedule,
)
from flux_bench.steering_setup import (
    PROMPT,
    calibrate,
    responsive_classifier,
    use_explicit_plan,
)
from flux_bench.throughput import throughput_rows
from flux_bench.timing import Budget, Clock, ForwardCounter, intercept_refinement

from l2s.capture import AttentionCapture
from l2s.classifier import first_blocks
from l2s.classifier import preset as classifier_preset
from l2s.pipelines import FluxSteeringPipeline
from l2s.steer import MODES

# Helpers bench/test_bench_steering.py imports from here, beside the script's own entry points.
__all__ = ["ForwardCounter", "classifier_gradient", "image_steps", "intercept_refinement", "main",
           "one_iteration_schedule", "parse_args", "report_path"]


def first_blocks_config(pipe, config, k: int):
    """``config`` reading only the first ``k`` blocks of ``pipe``'s transformer (its layout and
    channels); on FLUX.1-dev this is ``l2s.classifier.preset("flux-dev", layers=k)``'s layout."""
    capture = AttentionCapture(pipe.transformer)
    try:
        grid = config.orig_map_size or 32
        layout = first_blocks([[n, h, list(hw)] for n, h, hw in capture.layer_layout((grid, grid))], k)
    finally:
        capture.remove()
    return dataclasses.replace(config, layer_layout=layout, channels=sum(entry[1] for entry in layout))


def short_calibration(line: str) -> str:
    """A first-K classifier's calibration, shortened for the header: its gain and where it reaches 0.9."""
    gain = line.split(";")[0]
    where = re.search(r"\((reaches 0\.9 at evaluation \d+|stays below 0\.9)\)$", line)
    return f"{gain}, {where.group(1)}" if where else line


def first_blocks_steerers(pipe, config, args, steerer, calibration_resolution: int | None) -> tuple[dict, str]:
    """("layers", K) -> a fast steerer whose classifier reads the first K blocks, per ``--layers`` K,
    each calibrated as the main classifier (so its images exit early too); and their calibrations."""
    steerers, calibration = {}, ""
    for k in args.layers:
        layered = responsive_classifier(first_blocks_config(pipe, config, k))
        if calibration_resolution is not None:
            calibrated = calibrate(steerer(layered, "reference"), layered, calibration_resolution, STEP_SIZE)
            calibration += f"; first {k} blocks: {short_calibration(calibrated)}"
        steerers[("layers", k)] = steerer(layered, "fast", args.engine)
    return steerers, calibration


def make_steerers(pipe, arch, args, calibration_resolution: int | None) -> tuple[dict, object, str]:
    """The steerers of every row (a plan given, not parsed), the base classifier and the calibration."""
    def steerer(classifier, mode: str, engine: str = "eager"):
        made = FluxSteeringPipeline(pipe, classifier, mode=mode, max_sequence_length=arch.max_sequence_length,
                                    engine=engine)
        if mode != "reference":
            made.capture_backend = args.capture_backend
        return use_explicit_plan(made)

    config = classifier_preset("flux-dev", channels=arch.layers * arch.heads, **arch.classifier_overrides)
    classifier = responsive_classifier(config)
    # --engine runs the plain steps of every fast-mode steerer, so image rows differ in one thing each.
    steerers = {"reference": steerer(classifier, "reference"),       # eager classifier: calibrated through it
                "plain": steerer(classifier, "fast")}                # the forward rows' inputs (eager engine)
    calibration = "not calibrated (no whole images in this run)"
    if calibration_resolution is not None:
        calibration = calibrate(steerers["reference"], classifier, calibration_resolution, STEP_SIZE)
    # Fast mode may compile (and convert) its classifier: each steerer gets its own copy.
    steerers["fast"] = steerer(copy.deepcopy(classifier), "fast", args.engine)
    layered, calibrated = first_blocks_steerers(pipe, config, args, steerer, calibration_resolution)
    steerers.update(layered)
    calibration += calibrated
    for mode in COMPILED_MODES:     # the compiled steering modes this l2s has (CUDA graphs: on CUDA)
        if mode in MODES and not args.no_compile and (mode != "fast+cudagraphs" or args.device.startswith("cuda")):
            steerers[mode] = steerer(copy.deepcopy(steerers["fast"].classifier), mode, args.engine)
    if args.no_reference:
        steerers.pop("reference")
    return steerers, classifier, calibration


def all_rows(steerers: dict, classifier, arch, device, dtype, clock: Clock, args, budget: Budget) -> Iterator[Row]:
    """Every row, cheap ones first: under a time budget, the compile-heavy rows are the ones cut.
    The steering modes' compiled rows come last, so each cold compile is timed where it first happens."""
    resolutions = [] if args.no_micro else args.resolutions
    compiled_forwards = {}
    for resolution in resolutions:
        compiled_forwards[resolution] = forward_rows(steerers["plain"], clock, resolution, PROMPT, args, budget)
        yield next(compiled_forwards[resolution])                   # eager now, compiled later
        yield from capture_rows(arch, resolution, device, dtype, clock, args, budget)
        yield from iteration_rows(steerers, clock, resolution, args, budget)
    for resolution in args.image_resolutions:
        runs = image_runs(steerers, args.presets, args.reference_images, compiled=False)
        yield from image_rows(steerers, clock, resolution, runs, args, budget)
    for resolution in args.image_resolutions:
        if args.throughput_batches:
            yield from throughput_rows(steerers["fast"], clock, resolution, image_steps("fast", args.image_steps),
                                       args, budget)
    if not args.no_micro:       # before the steering modes' compiles, which take minutes cold on FLUX.1-dev
        yield from classifier_rows(classifier, device, clock, args, budget)
    for resolution in resolutions:
        yield from compiled_forwards[resolution]          # the forward compiles first: its cold time is its own
        yield from compiled_iteration_rows(steerers, clock, resolution, args, budget)
    for resolution in args.image_resolutions:
        runs = image_runs(steerers, args.presets, args.reference_images, compiled=True)
        yield from image_rows(steerers, clock, resolution, runs, args, budget)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = TINY if args.tiny else FLUX_DEV
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    clock, budget = Clock(device), Budget(args.budget_s, args.hard_limit_s)

    pipe = build_flux_pipeline(arch, device, dtype)
    resident = torch.cuda.memory_allocated() if device.type == "cuda" else None
    print(f"built {arch.name} on {device} in {budget.elapsed():.0f} s", file=sys.stderr, flush=True)
    steerers, classifier, calibration = make_steerers(
        pipe, arch, args, min(args.image_resolutions) if args.image_resolutions else None)
    out = report_path(args, arch.name, device)
    writer = RowWriter(out, header(args, arch, device, resident, calibration, argv))
    for row in all_rows(steerers, classifier, arch, device, dtype, clock, args, budget):
        writer.write(row)
    counts = writer.counts()
    writer.footer([f"Finished in {budget.elapsed():.0f} s (build {arch.name} included): {summary(counts)}."])
    print(f"written to {out} and {out.with_suffix('.jsonl')}", file=sys.stderr)
    return 1 if counts["failed"] else 0     # rows cut by the time budget are not failures


def summary(counts: dict[str, int]) -> str:
    """The run's rows in one phrase: how many measured, failed, and cut by the time budget."""
    return (f"{counts['measured']} rows measured, {counts['failed']} failed, {counts['skipped']} skipped "
            f"and {counts['stopped']} stopped by the time budget")


if __name__ == "__main__":
    sys.exit(main())
