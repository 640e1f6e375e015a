"""What a steered call needs of its caller, for both surfaces (:class:`~l2s.pipelines.SteeringPipeline`
and the diffusers-native pipelines): one call at a time per pipeline, and autograd."""
from __future__ import annotations

import functools
import threading
import weakref

import torch

from l2s.errors import UsageError


def one_call_at_a_time(method):
    """Refuse a second steering call while one runs (another thread's) on the same pipeline or on
    another built over the same modules (``from_pipe`` views, ``wrap_pipeline`` of one pipe share
    the denoiser and scheduler): the scheduler and the capture hold per-call state, so two calls
    would mix their steps."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        held = []
        try:
            for owner in _call_state(self):
                lock = _lock_of(owner)
                if not lock.acquire(blocking=False):
                    raise UsageError("this steering pipeline, or another built over the same modules, is already "
                                     "generating (a call from another thread?): one call at a time per set of "
                                     "modules; give each thread its own loaded pipeline")
                held.append(lock)
            return method(self, *args, **kwargs)
        finally:
            for lock in reversed(held):
                lock.release()
    return guarded


# Each object's lock, kept beside it (not in it: a module with a lock attribute could no longer be
# deep-copied or pickled); _LOCKS_GUARD makes each lock exactly once.
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(owner) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(owner)
        if lock is None:
            lock = _LOCKS[owner] = threading.Lock()
        return lock


def _call_state(pipe) -> list:
    """The objects a steering call changes: the pipeline, its denoiser (processors, requires_grad)
    and its scheduler (timesteps), whichever surface holds them."""
    inner = getattr(pipe, "pipe", pipe)       # SteeringPipeline wraps a diffusers pipeline
    denoiser = getattr(pipe, "steering_denoiser", None) or getattr(pipe, "denoiser", None)
    denoiser = getattr(denoiser, "_orig_mod", denoiser)   # the module torch.compile wrapped, as both surfaces see it
    found = [pipe, denoiser, getattr(inner, "scheduler", None)]
    unique = {id(o): o for o in found if o is not None}
    return sorted(unique.values(), key=id)   # one order for every caller: no lock-order deadlock


def refuse_inference_mode() -> None:
    """A ``UsageError`` under ``torch.inference_mode()``: steering differentiates through the model."""
    if torch.is_inference_mode_enabled():
        raise UsageError("steering differentiates through the model: call it outside "
                         "torch.inference_mode() (torch.no_grad() around it is fine)")
