"""What steering sees: each object's cross-attention map at every steered step, before and after.

:class:`MapRecorder` attaches to a :class:`~l2s.pipelines.base.SteeringPipeline`; on each steered
step it runs the denoiser once more on the latent before and after refinement, with the capture
the steering objective uses (the classifier's layers), and keeps one map per object: the mean over
the captured layers and heads of the image-token attention to the object's tokens (softmax over
the text), brought to the finest captured grid. Two extra forwards per steered step, so only
when asked (``l2s generate --save-maps``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from l2s.capture import CapturedMaps


@dataclass
class StepMaps:
    """The maps of one steered step: ``before`` / ``after`` are ``(images, objects, h, w)`` float32
    on the CPU, each map summing to 1; ``phrases`` name the objects in that order."""

    step: int
    phrases: list[str]
    before: torch.Tensor
    after: torch.Tensor


def object_maps(captured: CapturedMaps) -> torch.Tensor:
    """``(B, G, h, w)``: per object group, the mean map over captured layers and heads."""
    if not captured.layers:
        raise ValueError("no attention maps were recorded")
    grid = max((layer.grid for layer in captured.layers), key=lambda hw: hw[0] * hw[1])
    total = None
    for layer in captured.layers:
        batch, _, _, groups = layer.maps.shape
        maps = layer.maps.float().mean(dim=1)                           # (B, N, G)
        maps = maps.transpose(1, 2).reshape(batch, groups, *layer.grid)
        if tuple(layer.grid) != tuple(grid):
            maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
        total = maps if total is None else total + maps
    total = total / len(captured.layers)
    return (total / total.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)).cpu()


class MapRecorder:
    """Records :class:`StepMaps` for every steered step of a steering pipeline's calls.

    Use as a context manager (``with MapRecorder(steerer) as recorder: steerer(prompt)``) or call
    :meth:`detach`; ``recorder.steps`` keeps the maps in step order.
    """

    def __init__(self, steerer) -> None:
        self.steerer = steerer
        self.steps: list[StepMaps] = []
        inner = steerer.steer_step

        def steer_step(latents, step, plan, schedule, run_denoiser, text_len, latent_hw, diagnostics):
            before = self._observe(latents, plan, run_denoiser, text_len, latent_hw)
            latents = inner(latents, step, plan, schedule, run_denoiser, text_len, latent_hw, diagnostics)
            after = self._observe(latents, plan, run_denoiser, text_len, latent_hw)
            self.steps.append(StepMaps(step, list(plan.phrases), before, after))
            return latents

        steerer.steer_step = steer_step       # on this instance only

    def _observe(self, z, plan, run_denoiser, text_len: int, latent_hw) -> torch.Tensor:
        with torch.no_grad(), self.steerer.objective.new_capture() as capture, \
                capture.recording(plan.token_indices, text_len, latent_hw) as maps:
            run_denoiser(z)
        return object_maps(maps)

    def detach(self) -> None:
        """Stop recording: the pipeline's own ``steer_step`` again."""
        self.steerer.__dict__.pop("steer_step", None)

    def __enter__(self) -> MapRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()
