"""The exact rule as a reward: the shapes detector + GenEval's rule, for any shapes-world prompt.

``RuleReward()(images, prompts)`` is 1.0 where an image satisfies its prompt and 0.0 where it
does not: the "GenEval reward" of rule-based GRPO. Prompts are read from their text (chains of
"a <colour> <shape> <relation> a <colour> <shape> ...", joined by " and "), so two-object and
multi-relation prompts need no lookup table. ``verdict``: ``"strict"`` (every object found in its
colour and shape, every relation holding), ``"colour"`` (the rule on the colour blobs alone),
``"found"`` (every object found; relations ignored) or ``"single"`` (strict, and no object drawn
more than once: GenEval's rule passes an image with a second red circle, which a tuned model can
learn to draw).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from l2s.errors import L2SError
from l2s.evaluation import PromptSpec

from .detector import ShapesDetector
from .reward_prompts import parse_chain
from .verdicts import VERDICTS, all_objects_found, colour_only, extra_objects, judge

RULE_VERDICTS = (*VERDICTS, "single")


@lru_cache(maxsize=4096)
def prompt_spec(prompt: str) -> PromptSpec:
    """The checks of a shapes-world prompt, read from its words (cached: rewards repeat prompts)."""
    return parse_chain(prompt).spec()


def to_pil(images) -> list[Image.Image]:
    """PIL images from a list of them or a (B, 3, H, W) float tensor in [0, 1]."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise L2SError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]
    return [image.convert("RGB") for image in images]


class RuleReward:
    """A :class:`~l2s.reward.RewardFn`: 1.0 where the image passes the exact rule, else 0.0."""

    def __init__(self, verdict: str = "strict", detector: ShapesDetector | None = None) -> None:
        if verdict not in RULE_VERDICTS:
            raise L2SError(f"unknown verdict {verdict!r} (choose {', '.join(RULE_VERDICTS)})")
        self.verdict, self.detector = verdict, detector or ShapesDetector()

    def passes(self, image: Image.Image, prompt: str) -> bool:
        spec = prompt_spec(prompt)
        if self.verdict == "found":
            return all_objects_found(self.detector, image, spec)
        holds = bool(judge(self.detector, image, colour_only(spec) if self.verdict == "colour" else spec).correct)
        return holds and not (self.verdict == "single" and extra_objects(self.detector, image, spec))

    def __call__(self, images, prompts: Sequence[str]) -> torch.Tensor:
        pictures = to_pil(images)
        if len(pictures) != len(prompts):
            raise L2SError(f"{len(pictures)} images but {len(prompts)} prompts")
        return torch.tensor([float(self.passes(p, t)) for p, t in zip(pictures, prompts)], dtype=torch.float32)
