"""Rows of images per second against batch size: one call of B images, each with its own seed."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .report import Row
from .steering_setup import PROMPT
from .timing import Budget, Clock, guarded

GROUP = "whole image per batch size (time per image)"


def throughput_rows(steerer, clock: Clock, resolution: int, steps: int, args, budget: Budget) -> Iterator[Row]:
    """Plain, then steered with the ``fast`` preset, per batch size of ``args.throughput_batches``:
    the time of one call of B images divided by B; each row is compared with batch 1 of its kind."""
    for kind, steer in (("plain", False), ("steered, fast preset", True)):
        first = None
        for batch in args.throughput_batches:
            variant = f"{kind}, batch {batch}"
            row = Row(resolution, GROUP, variant, against=first)
            seeds = list(range(batch))

            def call(seeds=seeds, steer=steer):
                return steerer(PROMPT, seed=seeds, steer=steer, num_inference_steps=steps, height=resolution,
                               width=resolution, schedule="fast", progress=False)

            def measure(call=call, batch=batch):
                call()                                  # warm-up: compiles and allocators settle
                with clock.memory() as memory:
                    started = clock.mark()
                    call()
                    ms = clock.elapsed_ms(started, clock.mark())
                return ms / batch, memory["peak_extra"]

            row.note = f"{steps} steps, {batch} images per call, seeds 0-{batch - 1}"
            row.ms, row.peak_extra = guarded(row, measure, budget)
            first = first or variant
            yield row
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
