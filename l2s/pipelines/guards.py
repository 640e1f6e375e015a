"""What a steered call needs of its caller, for both surfaces (:class:`~l2s.pipelines.SteeringPipeline`
and the diffusers-native pipelines): one call at a time per pipeline, and autograd."""
from __future__ import annotations

import functools
import threading

import torch

from l2s.errors import UsageError


def one_call_at_a_time(method):
    """Refuse a second call on the same pipeline while one runs (another thread's): the diffusers
    pipeline's scheduler and the capture hold per-call state, so two calls would mix their steps."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        lock = self.__dict__.setdefault("_call_lock", threading.Lock())
        if not lock.acquire(blocking=False):
            raise UsageError("this steering pipeline is already generating (a call from another thread?): one "
                             "call at a time per pipeline; give each thread its own loaded pipeline")
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()
    return guarded


def refuse_inference_mode() -> None:
    """A ``UsageError`` under ``torch.inference_mode()``: steering differentiates through the model."""
    if torch.is_inference_mode_enabled():
        raise UsageError("steering differentiates through the model: call it outside "
                         "torch.inference_mode() (torch.no_grad() around it is fine)")
