"""The options of :func:`~l2s.training.make_dataset` and :func:`~l2s.training.train_classifier`,
checked before any work: a bad value is one ``L2SError`` line, never a default put in its place."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from l2s.devices import check_device
from l2s.errors import L2SError
from .store import MAP_DTYPES


def check_make_data_options(*, dtype: str = "float16", val_fraction: float = 0.15, shard_size: int = 16,
                            steps: int | None = None, size: int | None = None, limit: int | None = None,
                            min_psnr: float | None = None, gamma: float = 1.0, eta: float = 1.0,
                            num_iter: int = 5, map_size: int = 16, max_sequence_length: int = 512,
                            store_steps: Sequence[int] | None = None, max_per_class: int | None = None,
                            seed: int = 0, dual: bool = True, class_names: Sequence[str] = ("above",),
                            spelled: Callable[[str], str] = str) -> None:
    """Refuse, before any work, options :func:`make_dataset` cannot use (one ``L2SError`` line
    naming the option as ``spelled`` writes an argument's name: a CLI passes its flags)."""
    if dtype not in MAP_DTYPES:
        raise L2SError(f"{spelled('dtype')} must be one of {', '.join(MAP_DTYPES)}, got {dtype!r}")
    if isinstance(val_fraction, bool) or not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise L2SError(f"{spelled('val_fraction')} must be a number in [0, 1), got {val_fraction!r}")
    _check_seed(seed, spelled)
    if not isinstance(dual, bool):
        raise L2SError(f"{spelled('dual')} must be True or False, got {dual!r}")
    if isinstance(class_names, str) or not class_names or not all(isinstance(c, str) for c in class_names):
        raise L2SError(f"{spelled('class_names')} must be a list of relation names, got {class_names!r}")
    positive = dict(shard_size=shard_size, steps=steps, size=size, limit=limit, num_iter=num_iter,
                    map_size=map_size, max_sequence_length=max_sequence_length, max_per_class=max_per_class)
    for name, value in positive.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise L2SError(f"{spelled(name)} must be a positive integer, got {value!r}")
    for name, value in dict(min_psnr=min_psnr, gamma=gamma, eta=eta).items():
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise L2SError(f"{spelled(name)} must be a finite number, got {value!r}")
    for name, value in dict(gamma=gamma, eta=eta).items():   # they blend two velocities: beyond 1 extrapolates
        if value is not None and not 0.0 <= value <= 1.0:
            raise L2SError(f"{spelled(name)} must be in [0, 1] (an RF-Inversion controller strength), got {value}")
    if store_steps is not None and any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in store_steps):
        raise L2SError(f"{spelled('store_steps')} must be step indices (integers >= 0), got {list(store_steps)}")


PROMPT_TYPES = ("pos", "neg")   # a map of the true relation word, and of a wrong one (dual inversion)


def check_training_options(*, epochs: int | None = None, batch_size: int = 64, lr: float | None = None,
                           seed: int = 0, num_workers: int = 0, device: str = "cpu", layers: int | None = None,
                           resume: bool = True, prompt_types: Sequence[str] | None = None,
                           spelled: Callable[[str], str] = str) -> None:
    """Refuse, before any work, options :func:`train_classifier` cannot use (one ``L2SError`` line
    naming the option as ``spelled`` writes an argument's name)."""
    if not isinstance(resume, bool):
        raise L2SError(f"{spelled('resume')} must be True or False, got {resume!r}")
    if prompt_types is not None and (isinstance(prompt_types, str) or not prompt_types
                                     or any(t not in PROMPT_TYPES for t in prompt_types)):
        raise L2SError(f"{spelled('prompt_types')} must be a list of {' and '.join(PROMPT_TYPES)}, "
                       f"got {prompt_types!r}")
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                             ("layers", layers, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise L2SError(f"{spelled(name)} must be an integer >= {low}, got {value!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise L2SError(f"{spelled('lr')} must be a positive finite number, got {lr!r}")
    _check_seed(seed, spelled)
    check_device(device, spelled)


def _check_seed(seed, spelled: Callable[[str], str]) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise L2SError(f"{spelled('seed')} must be an integer in [0, 2**64), got {seed!r}")
