"""Pairwise accuracy of any judge on preference pairs, overall and per group (1 or 2-3 flipped
relations, a dropped or a duplicated object; pattern).

A judge is a :class:`~l2s.reward.RewardFn`; a pair counts as right when the winner scores higher
than the loser under the pair's prompt, and as half right on a tie (a 0/1 rule ties often).
The ``mirror`` direction asks the same of the perturbed prompt, under which the loser should win
(flip pairs only: a dropped- or duplicated-object loser shows no prompt of its pair).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from scipy.stats import binomtest

from l2s.errors import L2SError

from .pairs import PairSet, pair_group
from .scorer import images_to_tensor


def pair_scores(judge, pairs: PairSet, mirror: bool = False,
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(winner scores, loser scores) of every pair under its prompt (``mirror``: under the
    perturbed prompt, where the stored loser is the one that should win, so it is returned first)."""
    # a drop's perturbed prompt is what its loser was drawn from, a duplicate's is its own prompt
    if mirror and len(pairs.mirrorable()) < len(pairs):
        raise L2SError("dropped- and duplicated-object pairs have no mirror (no prompt of the pair makes their "
                       "loser win); score pairs.mirrorable()")
    prompts = [r["perturbed"] if mirror else r["prompt"] for r in pairs.records]
    first, second = (pairs.loser, pairs.winner) if mirror else (pairs.winner, pairs.loser)
    out_w, out_l = [], []
    for start in range(0, len(pairs), batch_size):
        part = slice(start, start + batch_size)
        for index, out in ((first, out_w), (second, out_l)):
            images = images_to_tensor(pairs.images[index[part]])   # (B, 3, H, W) in [0, 1], as a RewardFn takes
            out.append(torch.as_tensor(judge(images, prompts[part]), dtype=torch.float32).reshape(-1))
    if not out_w:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(out_w), torch.cat(out_l)


def accuracy(winner: torch.Tensor, loser: torch.Tensor) -> dict:
    """Share right (ties half), the count, and a 95 % Clopper-Pearson interval on the strict wins."""
    n = int(winner.numel())
    if n == 0:
        return {"accuracy": None, "n": 0}
    wins, ties = int((winner > loser).sum()), int((winner == loser).sum())
    low, high = binomtest(wins, n).proportion_ci(0.95)
    return {"accuracy": (wins + 0.5 * ties) / n, "n": n, "wins": wins, "ties": ties,
            "ci95_strict_wins": [round(low, 4), round(high, 4)]}


def grouped_accuracy(winner: torch.Tensor, loser: torch.Tensor, records: Sequence[dict],
                     key: Callable[[dict], str]) -> dict:
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(key(record), []).append(i)
    return {name: accuracy(winner[idx], loser[idx]) for name, idx in sorted(groups.items())}


def evaluate_judge(judge, pairs: PairSet, mirror: bool = True) -> dict:
    """Accuracy of ``judge`` on ``pairs``: overall, by kind (1 vs 2-3 flips, dropped or duplicated object; under
    the key "flips") and by prompt pattern; with ``mirror`` also the flip pairs under their
    perturbed prompts."""
    result = {}
    for direction in ("prompt", "mirror") if mirror else ("prompt",):
        part = pairs.mirrorable() if direction == "mirror" else pairs
        w, l = pair_scores(judge, part, mirror=direction == "mirror")
        result[direction] = {"all": accuracy(w, l),
                             "flips": grouped_accuracy(w, l, part.records, pair_group),
                             "pattern": grouped_accuracy(w, l, part.records, lambda r: r.get("pattern", "-"))}
    return result
