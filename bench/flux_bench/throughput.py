"""Rows of images per second against batch size: one call of B images, each with its own seed."""
from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from .report import Row
from .steering_setup import PROMPT
from .timing import Budget, Clock, LoopSpan, guarded

# The same span as the other whole-image rows: the stand-in encoders and VAE are not FLUX's.
GROUP = "whole image per batch size, denoising loop (time per image)"


def throughput_rows(steerer, clock: Clock, resolution: int, steps: int, args, budget: Budget) -> Iterator[Row]:
    """Plain, then steered with the ``fast`` preset, per batch size of ``args.throughput_batches``:
    the denoising loop of one call of B images divided by B; each row is compared with the first
    batch size of its kind (the speed-up column names it)."""
    for kind, steer in (("plain", False), ("steered, fast preset", True)):
        first = None
        for batch in args.throughput_batches:
            variant = f"{kind}, batch {batch}"
            row = Row(resolution, GROUP, variant, against=first)
            row.note = f"{steps} steps, {batch} images per call, seeds 0-{batch - 1}"
            measure = functools.partial(per_image, steerer, clock, resolution, steps, steer, batch)
            row.ms, row.peak_extra = guarded(row, measure, budget)
            first = first or variant
            yield row
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def per_image(steerer, clock: Clock, resolution: int, steps: int, steer: bool, batch: int) -> tuple[float, int | None]:
    """(denoising-loop milliseconds per image, peak extra bytes) of one call of ``batch`` seeds, after a warm-up."""
    def call():
        return steerer(PROMPT, seed=list(range(batch)), steer=steer, num_inference_steps=steps, height=resolution,
                       width=resolution, schedule="fast", progress=False)

    call()                                  # warm-up: compiles and allocators settle
    with clock.memory() as memory, LoopSpan(steerer.pipe, clock) as span:
        call()
    return span.elapsed_ms() / batch, memory["peak_extra"]     # elapsed_ms synchronizes first
