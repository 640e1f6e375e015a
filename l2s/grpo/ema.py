"""An exponential moving average of the adapter weights: what evaluation and the saved adapter use."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class AdapterEMA:
    """EMA copies of named parameters, updated after every ``every``-th optimiser step.

    ``decay`` is per update; the averages start at the initial weights (for a fresh LoRA adapter,
    the base model), so early averages lean towards the base model.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float, every: int = 1) -> None:
        self.params, self.decay, self.every = params, float(decay), int(every)
        self.shadow = {name: p.detach().clone() for name, p in params.items()}
        self.updates = 0

    @torch.no_grad()
    def step(self, optimizer_step: int) -> None:
        """Call after optimiser step number ``optimizer_step`` (counting from 1)."""
        if optimizer_step % self.every:
            return
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The EMA weights in place of the live ones inside the block; the live ones restored after."""
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(saved[name])

    def state_dict(self) -> dict:
        return {"shadow": {k: v.cpu() for k, v in self.shadow.items()}, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
        self.updates = int(state["updates"])
