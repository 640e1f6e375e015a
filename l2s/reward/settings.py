"""What a reward-model run is made with: the loss names and :class:`RewardTrainSettings`.

No torch here, so ``l2s shapes train-reward --help`` can show the choices and defaults at once.
"""
from __future__ import annotations

from collections.abc import Callable
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

    def check(self, spelled: Callable[[str], str] = str) -> None:
        """Raise :class:`L2SError` naming the first setting that cannot work (``spelled``: its name
        as the caller's user knows it, e.g. the command-line flag)."""
        if self.loss not in LOSSES:
            raise L2SError(f"unknown loss {self.loss!r} (choose {', '.join(LOSSES)})")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise L2SError(f"{spelled(name)} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise L2SError(f"{spelled('lr')} must be positive, got {self.lr}")
        for name in ("weight_decay", "warmup_steps", "grad_clip"):
            if getattr(self, name) < 0:
                raise L2SError(f"{spelled(name)} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise L2SError(f"{spelled('val_fraction')} must be in [0, 1), got {self.val_fraction}")
        for name in ("d_model", "joint_layers", "grounding_layers"):
            value = self.model.get(name)
            if value is not None and value < (1 if name == "d_model" else 0):
                raise L2SError(f"{spelled(name)} must be {'at least 1' if name == 'd_model' else '0 or more'}, "
                               f"got {value}")
        design = self.model.get("design", "joint")   # SpatialScoreConfig's default (model.py needs torch)
        if self.model.get("presence") and design != "relational":
            raise L2SError(f"{spelled('presence')} needs the relational design, not {design!r}")
        heads = self.model.get("heads", 4)
        if self.model.get("d_model", heads) % heads:
            raise L2SError(f"{spelled('d_model')} must be a multiple of the {heads} attention heads, "
                           f"got {self.model['d_model']}")
