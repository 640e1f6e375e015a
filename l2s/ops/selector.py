"""The ``(T, W)`` selector that turns text-softmax probabilities into per-object maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def token_group_selector(
    groups: Sequence[Sequence[int]],
    text_len: int,
    width: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Build the ``(text_len, width)`` selector matrix: column ``g`` holds ``1/n_g`` on group ``g``'s tokens.

    ``width`` (default ``len(groups)``) pads with zero columns, which some SDPA kernels need.
    """
    if not dtype.is_floating_point:   # 1/n would truncate to 0 in an integer selector
        raise TypeError(f"the selector holds token weights 1/n: give a floating dtype, got {dtype}")
    width = len(groups) if width is None else width
    if width < len(groups):
        raise ValueError(f"selector width {width} < number of groups {len(groups)}")
    selector = torch.zeros(text_len, width, device=device, dtype=dtype)
    for column, tokens in enumerate(groups):
        tokens = _indices(tokens)
        if not tokens or len(set(tokens)) != len(tokens) or not all(0 <= t < text_len for t in tokens):
            # an empty group has no map, a repeated token would weigh twice, a negative one wrap around
            raise ValueError(f"token group {column} must be distinct token indices in [0, {text_len}), got {tokens}")
        selector[tokens, column] = 1.0 / len(tokens)
    return selector


def _indices(tokens) -> list:
    """A group's token indices as plain ints (ints, numpy ints, an integer tensor or its 0-d
    elements); a ``ValueError`` when any is not a whole number (a float or a bool)."""
    def integer(t) -> bool:
        return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)

    if isinstance(tokens, torch.Tensor):
        tokens = tokens.reshape(-1).tolist() if integer(tokens) else [tokens]
    elif isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
        raise ValueError(f"a token group is a sequence of token indices, got {tokens!r}")
    tokens = [t.item() if isinstance(t, torch.Tensor) and t.ndim == 0 and integer(t) else t for t in tokens]
    if all(hasattr(t, "__index__") and not isinstance(t, (bool, torch.Tensor)) for t in tokens):
        return [t.__index__() for t in tokens]
    raise ValueError(f"token groups hold whole token indices, got {tokens}")


def selector_width(num_groups: int, head_dim: int, device: torch.device | str, backend: str = "sdpa") -> int:
    """Value width that lets a fused SDPA kernel (not the math backend) compute the maps.

    CUDA's memory-efficient kernel accepts a value head dim different from q/k's, in multiples of 8.
    On CPU the only fused kernel (flash) needs value dim == q/k dim, so the selector is padded to the
    head dim there; with a narrower value, torch falls back to the math backend, which keeps the full
    probability tensor for backward.
    """
    if backend not in ("sdpa", "native"):
        raise ValueError(f"unknown backend {backend!r}; expected one of ('sdpa', 'native')")
    if torch.device(device).type == "cuda":
        return max(8, -(-num_groups // 8) * 8)
    if backend == "native":                      # l2s_fast's CPU kernel: no padding needed
        return num_groups
    return max(head_dim, num_groups)
