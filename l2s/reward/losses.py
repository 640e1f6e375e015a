"""Pairwise preference losses on reward scores.

* :func:`bradley_terry_loss`: ``-log sigmoid(r_w - r_l)``, the plain Bradley-Terry likelihood.
* :func:`uncertainty_loss`: each score is a Gaussian N(mu, s^2); the winner beats the loser with
  probability ``Phi((mu_w - mu_l) / sqrt(s_w^2 + s_l^2))`` and the loss is its negative log. A
  pair the model is unsure of may widen its spreads instead of distorting the means.
"""
from __future__ import annotations

import torch

from .settings import LOSSES


def bradley_terry_loss(mean_w: torch.Tensor, mean_l: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``-log sigmoid(mean_w - mean_l)``."""
    return torch.nn.functional.softplus(mean_l - mean_w).mean()


def win_probability(mean_w: torch.Tensor, log_var_w: torch.Tensor, mean_l: torch.Tensor,
                    log_var_l: torch.Tensor) -> torch.Tensor:
    """P(score_w > score_l) for independent Gaussian scores."""
    spread = (log_var_w.exp() + log_var_l.exp()).sqrt()
    return torch.special.ndtr((mean_w - mean_l) / spread)


def uncertainty_loss(mean_w: torch.Tensor, log_var_w: torch.Tensor, mean_l: torch.Tensor,
                     log_var_l: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``-log Phi((mu_w - mu_l) / sqrt(s_w^2 + s_l^2))`` (log_ndtr: stable in the tails)."""
    spread = (log_var_w.exp() + log_var_l.exp()).sqrt()
    return -torch.special.log_ndtr((mean_w - mean_l) / spread).mean()


def pair_loss(kind: str, winner: tuple[torch.Tensor, torch.Tensor], loser: tuple[torch.Tensor, torch.Tensor]):
    """The ``kind`` loss (:data:`LOSSES`) of (mean, log_var) score pairs; plain BT ignores the spreads."""
    if kind == "bt":
        return bradley_terry_loss(winner[0], loser[0])
    if kind == "uncertainty":
        return uncertainty_loss(winner[0], winner[1], loser[0], loser[1])
    raise ValueError(f"unknown loss {kind!r} (choose {', '.join(LOSSES)})")
