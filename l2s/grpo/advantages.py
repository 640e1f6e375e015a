"""Group-relative advantages: which samples of a prompt's group train, and with what weight.

Rewards come as a (prompts, G) table, one row per prompt's group of G images. Top-k filtering
keeps the k highest and the k lowest rewards of each group and drops the middle, so that on an
easy prompt a good image is compared with the bad ones rather than pushed down for being
average. The kept rewards are centred on their group's mean and divided by a spread: the
group's own (``"group"``) or one shared by every group of the batch (``"global"``). Advantages
are clipped to +-``clip``; dropped samples get 0 and a mask that keeps them out of training.
"""
from __future__ import annotations

import torch

from l2s.errors import L2SError

from .settings import STD_MODES


def top_k_mask(rewards: torch.Tensor, k: int | None) -> torch.Tensor:
    """(P, G) bool: the k highest and k lowest rewards of each row (all when ``k`` is None or
    2k >= G). Ties are broken by position (a stable sort), so the choice is deterministic."""
    count = rewards.shape[1]
    if k is None or 2 * k >= count:
        return torch.ones_like(rewards, dtype=torch.bool)
    if k < 1:
        raise L2SError(f"top-k needs k >= 1 (got {k}); turn filtering off instead")
    order = torch.argsort(rewards, dim=1, stable=True)
    keep = torch.zeros_like(rewards, dtype=torch.bool)
    chosen = torch.cat([order[:, :k], order[:, -k:]], dim=1)
    return keep.scatter(1, chosen, True)


def centred_rewards(rewards: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each kept reward minus the mean of its group's kept rewards; 0 where not kept."""
    keep_f = keep.float()
    mean = (rewards * keep_f).sum(dim=1, keepdim=True) / keep_f.sum(dim=1, keepdim=True).clamp_min(1)
    return (rewards - mean) * keep_f


def group_advantages(rewards: torch.Tensor, keep: torch.Tensor, std: str = "group", clip: float = 5.0,
                     eps: float = 1e-4, global_std: float | None = None) -> torch.Tensor:
    """Advantages (P, G): centred kept rewards over the group's spread (population std of its kept
    rewards) or over ``global_std`` (``std="global"``: the spread of every group's centred kept
    rewards, which the caller may gather over processes; computed here from ``rewards`` when not
    given), plus ``eps``, clipped to +-``clip``. A group whose kept rewards are all equal gets 0."""
    if std not in STD_MODES:
        raise L2SError(f"unknown advantage std {std!r} (choose {', '.join(STD_MODES)})")
    centred = centred_rewards(rewards.float(), keep)
    if std == "group":
        keep_f = keep.float()
        spread = ((centred**2).sum(dim=1, keepdim=True) / keep_f.sum(dim=1, keepdim=True).clamp_min(1)).sqrt()
    else:
        spread = torch.tensor(global_std if global_std is not None else float(global_spread(centred, keep)))
    return (centred / (spread + eps)).clamp(-clip, clip) * keep.float()


def global_spread(centred: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Population std of the centred kept rewards of all groups (their mean is 0 by construction)."""
    return ((centred[keep] ** 2).mean()).sqrt() if keep.any() else torch.tensor(0.0)
