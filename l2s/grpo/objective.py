"""The clipped policy-ratio objective of GRPO, with a KL penalty to the reference model."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossTerms:
    """The loss to minimise and what the training log reports about it (floats, detached)."""

    loss: torch.Tensor
    policy: float
    kl: float
    ratio: float
    clip_fraction: float


def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
              clip_range: float, kl: torch.Tensor | None = None, beta: float = 0.0) -> LossTerms:
    """``mean(max(-A r, -A clip(r, 1 - eps, 1 + eps))) + beta * mean(KL)`` over the rows, with
    ``r = exp(log_prob - old_log_prob)``: the pessimistic bound stops a step from moving any
    sample's ratio far past the clip range in the direction its advantage favours."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy = torch.maximum(unclipped, clipped).mean()
    kl_mean = kl.mean() if kl is not None else torch.zeros((), device=log_prob.device)
    loss = policy + beta * kl_mean if beta else policy
    outside = ((ratio - 1.0).abs() > clip_range).float().mean()
    return LossTerms(loss, float(policy.detach()), float(kl_mean.detach()), float(ratio.detach().mean()),
                     float(outside))
