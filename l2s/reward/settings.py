"""What a reward-model run is made with: the loss names and :class:`RewardTrainSettings`.

No torch here, so ``l2s shapes train-reward --help`` can show the choices and defaults at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from l2s.errors import L2SError

LOSSES = ("uncertainty", "bt")


@dataclass
class RewardTrainSettings:
    loss: str = "uncertainty"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    mirror: bool = True
    val_fraction: float = 0.05
    seed: int = 0
    # SpatialScoreConfig overrides: the relational design (l2s.reward.relational) on an 8x8 grid
    model: dict = field(default_factory=lambda: {"design": "relational", "channels": [16, 32, 64]})

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise L2SError(f"unknown loss {self.loss!r} (choose {', '.join(LOSSES)})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.val_fraction < 1:
            raise L2SError("need epochs >= 1, batch size >= 1, lr > 0 and 0 <= val fraction < 1")
