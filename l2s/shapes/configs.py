"""Sizes of the shapes model and the settings of its training: plain dataclasses without torch,
so that the command line's ``--help`` can show their defaults."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from l2s.errors import L2SError

# T5 tokens the model reads: the longest shapes caption ("a photo of a red circle to the left of
# a blue square. a green triangle and a yellow diamond") is 23 tokens with </s>.
TEXT_WINDOW = 32


@dataclass
class ShapesModelConfig:
    """Sizes of the shapes-world model (defaults: the shipped model)."""

    image_size: int = 32
    vae_factor: int = 2           # space-to-depth; FLUX packs 2x2 more -> tokens of 4x4 pixels
    num_heads: int = 4
    head_dim: int = 32            # transformer width = num_heads * head_dim
    double_layers: int = 2
    single_layers: int = 3
    rope_axes: tuple[int, int, int] = (8, 12, 12)   # sums to head_dim; axis 0 is FLUX's unused id
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    text_window: int = TEXT_WINDOW
    clip_dim: int = 32
    clip_layers: int = 1
    # Pixels in [-1, 1] are mostly background: centre and scale them to about unit variance,
    # as the FLUX VAE's shift/scale factors do for its latents.
    latent_shift: float = 0.74
    latent_scale: float = 2.15

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapesModelConfig:
        data = dict(data)
        data["rope_axes"] = tuple(data["rope_axes"])
        return cls(**data)


def rope_axes_for(head_dim: int) -> tuple[int, int, int]:
    """RoPE split of a head: FLUX's unused first axis gets the remainder, rows and columns ~3/8 each."""
    side = max(2, round(3 * head_dim / 16) * 2)
    if head_dim - 2 * side < 2 or head_dim % 2:
        raise L2SError(f"head dimension {head_dim} is too small or odd for FLUX's 3-axis RoPE")
    return (head_dim - 2 * side, side, side)


# Presets for tests (tiny) and the default trained model.
TINY_CONFIG = ShapesModelConfig(num_heads=2, head_dim=16, double_layers=1, single_layers=1,
                                rope_axes=(4, 4, 8), text_dim=32, text_layers=1, text_heads=2,
                                text_ff=32, clip_dim=16, clip_layers=1)


@dataclass
class TrainSettings:
    """Everything that determines a training run (stored in checkpoints and training.json)."""

    steps: int = 5000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    sigma_sampling: str = "logit-normal"
    seed: int = 0
    scenes: int = 40000
    size: int = 32
    n_objects: tuple[int, int] = (2, 4)
    object_sizes: tuple[int, int] = (8, 12)
    relation_caption_rate: float = 0.15
    checkpoint_every: int = 250
    init_from: str | None = None  # a shapes pipeline folder whose weights start the run
    grow: bool = False  # init_from may have fewer blocks: append the missing ones as identities
    repatch: bool = False  # init_from may have another vae_factor: fresh patch embedding and output
    model: dict = field(default_factory=lambda: asdict(ShapesModelConfig()))

    def run_identity(self) -> dict:
        """Settings that must match to resume a run (the step count may grow)."""
        data = asdict(self)
        for key in ("steps", "checkpoint_every"):
            data.pop(key)
        return json.loads(json.dumps(data))
