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
