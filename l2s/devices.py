"""Torch devices named by the user, checked before any work (every layer that takes a device)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from l2s.errors import L2SError


def check_device(device: str, spelled: Callable[[str], str] = str) -> None:
    """``L2SError`` unless ``device`` names a torch device that this machine has (the message names
    the argument as ``spelled`` writes it)."""
    device_is = f"{spelled('device')} {device!r}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise L2SError(f"{device_is} is not a torch device (cpu, cuda, cuda:N, mps, xpu)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise L2SError(f"{device_is}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise L2SError(f"{device_is}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":   # mps, xpu, ...: torch's own module for the kind says if it is here
        available = getattr(getattr(torch, parsed.type, None), "is_available", None)
        if available is None:
            raise L2SError(f"{device_is} is not supported (cpu, cuda, cuda:N, mps, xpu)")
        if not available():
            raise L2SError(f"{device_is}: {parsed.type.upper()} is not available on this machine")


def default_device() -> str:
    """"cuda" when a GPU is usable, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# Weights dtypes by the names the command line and run records use.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(name: str, device: str, family: str | None = None) -> str:
    """A weights dtype name with ``auto`` resolved for a model of ``family`` ("flux", "sd" or None) on
    ``device``: the published one on a GPU (FLUX bf16, SD fp32), fp32 on the CPU."""
    if name != "auto":
        return name
    on_gpu = not str(device).startswith("cpu")
    return "fp32" if not on_gpu or family == "sd" else "bf16"


def weights_dtype(dtype: str | torch.dtype, device: str, family: str | None = None) -> torch.dtype:
    """The torch dtype of ``dtype`` (a torch dtype, or a name of :data:`DTYPES` or "auto", as :func:`dtype_name`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype, device, family)
    if name not in DTYPES:
        raise L2SError(f"dtype must be a torch.dtype or one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[name]
