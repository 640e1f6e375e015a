"""Timing, memory and counting helpers, and the hook that times the pipeline's own refinement call."""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from .report import Row


class Clock:
    """Wall time of work on ``device``: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end)
        return (end - start) * 1e3

    @contextlib.contextmanager
    def memory(self) -> Iterator[dict]:
        """Yields a dict that gets ``peak_extra``: peak bytes allocated above the starting level."""
        out: dict = {"peak_extra": None}
        if self.cuda:
            self.sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        try:
            yield out
        finally:
            if self.cuda:
                self.sync()
                out["peak_extra"] = torch.cuda.max_memory_allocated() - base

    def measure(self, fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, int | None]:
        """(median milliseconds, peak extra bytes) of ``fn`` over ``repeats`` runs after ``warmup``."""
        for _ in range(warmup):
            fn()
        with self.memory() as mem:
            spans = []
            for _ in range(repeats):
                start = self.mark()
                fn()
                spans.append((start, self.mark()))
            self.sync()
        return statistics.median(self.elapsed_ms(a, b) for a, b in spans), mem["peak_extra"]


def timed_first_call(fn: Callable[[], object], clock: Clock) -> float:
    """Seconds of one call including its compile / capture (the cold cost)."""
    clock.sync()
    started = time.perf_counter()
    fn()
    clock.sync()
    return time.perf_counter() - started


class LoopSpan:
    """Times a generation's denoising loop: end of the prompt encoding -> start of the VAE decode.

    The start is marked by the T5 encoder, not by the transformer: a hook on the transformer would
    make steering fall back to the stock forward, and the first pass may be a compiled one.
    """

    def __init__(self, pipe, clock: Clock) -> None:
        self.clock = clock
        self.start = self.end = None
        encoder = getattr(pipe, "text_encoder_2", None) or pipe.text_encoder
        self._handles = [
            encoder.register_forward_hook(self._on_encoded),
            pipe.vae.decoder.register_forward_pre_hook(self._on_decode),
        ]

    def _on_encoded(self, module, args, output):
        self.start = self.clock.mark()              # the last encoding (the negative prompt's) wins

    def _on_decode(self, module, args):
        self.end = self.clock.mark()

    def elapsed_ms(self) -> float:
        self.clock.sync()
        return self.clock.elapsed_ms(self.start, self.end)

    def __enter__(self) -> "LoopSpan":
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()


class ForwardCounter:
    """Counts a FLUX transformer's passes (also those cut short after the last captured layer).

    It counts calls of the latent's input embedding (``x_embedder``), which the stock forward and
    l2s's steered forward both make once per pass: a hook on the transformer itself would make
    steering fall back to the stock forward (see ``l2s.capture.steered_forward_unsupported``).
    Passes of a compiled steered evaluation are counted by its ``CompiledSteering.calls`` (give
    ``steerer``): the hook stays out of compiled graphs, which a Python counter in them would
    recompile and a tensor one would keep from being replayed as a CUDA graph.
    ``record_kwargs=True`` also keeps the keyword arguments of the first stock forward call (that
    hook is on the transformer: use it on unsteered runs).
    """

    def __init__(self, module: torch.nn.Module, record_kwargs: bool = False, steerer=None) -> None:
        self.first_call_kwargs: dict | None = None
        self._steerer = steerer
        self._eager, self._compiled_start = 0, self._compiled_calls()
        counted = getattr(module, "x_embedder", module)
        self._handles = [counted.register_forward_pre_hook(self._on_pass)]
        if record_kwargs:
            self._handles.append(module.register_forward_pre_hook(self._on_call, with_kwargs=True))

    @property
    def count(self) -> int:
        return self._eager + self._compiled_calls() - self._compiled_start

    def reset(self) -> None:
        self._eager, self._compiled_start = 0, self._compiled_calls()

    def _compiled_calls(self) -> int:
        steered = getattr(getattr(self._steerer, "objective", None), "_steered", None)
        compiled = getattr(steered, "compiled", None)
        return compiled.calls if compiled is not None else 0

    def _on_pass(self, module, args):
        if torch.compiler.is_compiling():       # a compiled steered pass: its CompiledSteering counts it
            return
        self._eager += 1

    def _on_call(self, module, args, kwargs):
        if self.first_call_kwargs is None:
            self.first_call_kwargs = {k: v.detach() if torch.is_tensor(v) else v for k, v in kwargs.items()}

    def __enter__(self) -> "ForwardCounter":
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def intercept_refinement(steerer, handler: Callable) -> Iterator[None]:
    """Route ``steerer``'s refinement calls (its ``refine`` hook) through ``handler``.

    ``handler(refine, latents, step, log_prob_fn, schedule, num_relations, diagnostics, **kwargs)``
    gets the real function first and must return what it returns, so a benchmark times the
    pipeline's own refinement call (capture installed, its objective at the step, its mode's
    options) without re-implementing any of it.
    """
    original = steerer.refine

    def hook(*args, **kwargs):
        return handler(original, *args, **kwargs)

    steerer.refine = hook
    try:
        yield
    finally:
        steerer.refine = original


class Budget:
    """Seconds a run may take; rows started after it are skipped (and say so), not measured. With
    ``hard_seconds`` a row still running at that point is stopped (a cold compile or a hang must
    not take the run past its limit)."""

    def __init__(self, seconds: float | None, hard_seconds: float | None = None) -> None:
        self.seconds, self.hard_seconds = seconds, hard_seconds
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def spent(self) -> bool:
        limits = [limit for limit in (self.seconds, self.hard_seconds) if limit is not None]
        return bool(limits) and self.elapsed() > min(limits)

    def left(self) -> float | None:
        """Seconds until the hard limit (None: no hard limit)."""
        return None if self.hard_seconds is None else self.hard_seconds - self.elapsed()


class RowStopped(BaseException):
    """A row still running at the run's hard limit (not an Exception: code that catches those
    must not swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`RowStopped` in this (main) thread after ``seconds``; nothing when None or
    where signals cannot be used (another thread, Windows)."""
    import signal
    import threading

    if seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise RowStopped(f"stopped at the run's hard limit after {seconds:.0f} s in this row")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def guarded(row: Row, measure: Callable[[], tuple], budget: Budget | None = None) -> tuple:
    """Run one measurement; out-of-memory, a failure or a spent budget becomes the row's note."""
    if budget is not None and budget.spent():
        limit = budget.seconds if budget.seconds is not None else budget.hard_seconds
        row.note, row.status = f"skipped: time budget ({limit:.0f} s) spent", "skipped"
        return None, None
    try:
        with deadline(budget.left() if budget is not None else None):
            return measure()
    except RowStopped as error:
        row.note, row.status = str(error), "stopped"
    except torch.cuda.OutOfMemoryError:
        row.note, row.status = "out of memory", "failed"
    except Exception as error:  # one broken path must not hide every other number
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        row.note, row.status = f"failed: {type(error).__name__}: {message}"[:300], "failed"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None, None
