"""What a reward is: any callable that scores a batch of images against their prompts.

The GRPO loop and the benches only ever call ``reward(images, prompts)``; a learned reward model
(:class:`~l2s.reward.model.SpatialScore` through :class:`~l2s.reward.scorer.SpatialScorer`) and a
rule (a detector plus a scoring rule) are interchangeable behind it.
"""
from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

import torch
from PIL import Image

# A batch of images: PIL images, or a (B, 3, H, W) float tensor in [0, 1].
Images = Union[Sequence[Image.Image], torch.Tensor]


@runtime_checkable
class RewardFn(Protocol):
    """``reward(images, prompts) -> (B,) float32 tensor``, higher is better; one prompt per image."""

    def __call__(self, images: Images, prompts: Sequence[str]) -> torch.Tensor: ...
