"""Everything that determines a GRPO run, checked before any work starts."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from l2s.errors import L2SError

STD_MODES = ("group", "global")   # what advantages divide by: each group's spread, or one for all
MIN_GROUP = 12  # below this a group's mean and spread are too noisy for advantages; 24 is the default


@dataclass
class GRPOSettings:
    """One GRPO run (stored in checkpoints; all but ``epochs`` must match to resume).

    Sampling: ``steps`` scheduler steps, the first ``sde_steps`` (default all but the last) as SDE
    steps with noise level ``noise_level``, guidance ``true_cfg`` against the empty prompt (1 =
    none; ``guidance`` for guidance-distilled models), images of ``size`` pixels (default: the
    pipeline's). Groups: ``prompts_per_epoch`` prompts x ``group_size`` images; ``top_k`` highest
    and lowest rewards of each group train (None: all); advantages over the group's spread or a
    global one (``std``), clipped to +-``adv_clip``. Objective: ratio clip ``clip_range``, KL weight
    ``beta``; ``optimizer_steps`` AdamW steps per epoch. Adapter: LoRA ``lora_rank`` / ``lora_alpha``;
    EMA ``ema_decay`` per optimiser step. ``chunk``: images per transformer call.
    """

    epochs: int = 100
    prompts_per_epoch: int = 8
    group_size: int = 24
    top_k: int | None = 6
    steps: int = 12
    sde_steps: int | None = None
    noise_level: float = 0.7
    true_cfg: float = 1.0
    guidance: float = 3.5
    size: int | None = None
    max_sequence_length: int = 512
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    beta: float = 0.01
    std: str = "group"
    optimizer_steps: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    ema_decay: float = 0.9
    chunk: int = 24
    eval_seeds: tuple[int, ...] = (0, 1)
    seed: int = 0

    @property
    def trained_steps(self) -> int:
        return self.steps - 1 if self.sde_steps is None else self.sde_steps

    def check(self, world_size: int = 1, spelled: Callable[[str], str] = str) -> None:
        """Raise :class:`L2SError` naming the first setting that cannot work (``spelled``: a
        setting's name as the caller's user knows it, e.g. its command-line flag)."""
        if self.group_size < MIN_GROUP:
            raise L2SError(f"GRPO needs groups of at least {MIN_GROUP} images per prompt ({spelled('group_size')} "
                           f"{self.group_size}): smaller groups give advantages too noisy to train on")
        if self.top_k is not None and not 1 <= self.top_k <= self.group_size // 2:
            raise L2SError(f"{spelled('top_k')} must be between 1 and half the group ({self.group_size // 2}), "
                           f"got {self.top_k}")
        if self.steps < 2:
            raise L2SError(f"GRPO samples with at least 2 steps (the last is a plain ODE step), got {self.steps}")
        if not 1 <= self.trained_steps <= self.steps:
            raise L2SError(f"{spelled('sde_steps')} must be between 1 and steps ({self.steps}), "
                           f"got {self.trained_steps}")
        if self.std not in STD_MODES:
            raise L2SError(f"unknown advantage std {self.std!r} (choose {', '.join(STD_MODES)})")
        if self.prompts_per_epoch % world_size:
            raise L2SError(f"{spelled('prompts_per_epoch')} ({self.prompts_per_epoch}) must divide evenly over "
                           f"{world_size} processes")
        for name in ("epochs", "prompts_per_epoch", "lr", "noise_level", "clip_range", "chunk", "optimizer_steps",
                     "lora_rank", "true_cfg"):
            if not getattr(self, name) > 0:
                raise L2SError(f"{spelled(name)} must be positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2 ** 32:
            raise L2SError(f"{spelled('seed')} must be an integer in [0, 2**32), got {self.seed}")
        if self.beta < 0:
            raise L2SError(f"{spelled('beta')} must be 0 or more, got {self.beta}")
        if not 0 <= self.ema_decay < 1:
            raise L2SError(f"{spelled('ema_decay')} must be in [0, 1), got {self.ema_decay}")

    def run_identity(self) -> dict:
        """The settings that must match to resume (the epoch count may grow)."""
        data = asdict(self)
        data.pop("epochs")
        return json.loads(json.dumps(data))
