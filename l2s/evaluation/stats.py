"""Statistics of evaluation runs: per-run summaries and paired comparisons of two settings."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import GENEVAL
from .specs import ImageResult


@dataclass
class Summary:
    """Aggregate of an evaluation run."""

    rule: str
    n_images: int
    n_correct: int
    mean_score: float
    per_relation: dict[str, list[int]]  # relation -> [checks that hold, checks]
    per_tag: dict[str, list[int]]  # tag -> [correct images, images]
    n_prompts: int
    n_prompts_any_correct: int
    no_verdict: dict[str, str] = field(default_factory=dict)   # prompt -> why its images have no verdict
    n_no_verdict: int = 0   # images without a verdict, in no count above
    results: list[ImageResult] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        """Share of correct images (GenEval's headline number)."""
        return self.n_correct / self.n_images if self.n_images else 0.0

    def to_dict(self) -> dict[str, Any]:
        ratio = lambda pair: pair[0] / pair[1] if pair[1] else 0.0  # noqa: E731
        return {
            "rule": self.rule, "n_images": self.n_images, "n_correct": self.n_correct,
            "accuracy": self.accuracy, "mean_score": self.mean_score,
            "n_prompts": self.n_prompts, "n_prompts_any_correct": self.n_prompts_any_correct,
            "prompt_accuracy": self.n_prompts_any_correct / self.n_prompts if self.n_prompts else 0.0,
            "per_relation": {k: {"holds": v[0], "total": v[1], "accuracy": ratio(v)}
                             for k, v in self.per_relation.items()},
            "per_tag": {k: {"correct": v[0], "total": v[1], "accuracy": ratio(v)}
                        for k, v in self.per_tag.items()},
            "n_images_no_verdict": self.n_no_verdict, "no_verdict": dict(self.no_verdict),
        }

    def table(self) -> str:
        """A printable table: overall, per tag and per relation."""
        rows = [("overall (images)", self.n_correct, self.n_images)]
        rows += [(f"tag {tag}", c, t) for tag, (c, t) in sorted(self.per_tag.items())]
        rows += [(f"relation {rel}", c, t) for rel, (c, t) in sorted(self.per_relation.items())]
        rows.append(("prompts with any correct", self.n_prompts_any_correct, self.n_prompts))
        unjudged = "no verdict (images, not counted)"
        width = max([len(name) for name, _, _ in rows] + [len(unjudged)] * bool(self.n_no_verdict))
        lines = [f"{'group':<{width}}  {'correct':>7}  {'total':>5}  {'accuracy':>8}",
                 "-" * (width + 27)]
        for name, correct, total in rows:
            accuracy = correct / total if total else 0.0
            lines.append(f"{name:<{width}}  {correct:>7}  {total:>5}  {accuracy:>8.3f}")
        lines.append(f"{'mean score (' + self.rule + ')':<{width}}  {'':>7}  {'':>5}  {self.mean_score:>8.3f}")
        if self.n_no_verdict:
            lines.append(f"{unjudged:<{width}}  {'':>7}  {self.n_no_verdict:>5}")
        return "\n".join(lines)


def summarise(results: Sequence[ImageResult], rule: str = GENEVAL) -> Summary:
    """Aggregate per-image results (per relation counts checks, per tag counts images). An image
    without a verdict (``correct`` None) is in no count: its prompt is named in ``no_verdict``."""
    per_relation: dict[str, list[int]] = {}
    per_tag: dict[str, list[int]] = {}
    prompts: dict[str, bool] = {}
    judged = [result for result in results if result.correct is not None]
    for result in judged:
        tag = per_tag.setdefault(result.tag, [0, 0])
        tag[0] += int(result.correct)
        tag[1] += 1
        prompts[result.prompt] = prompts.get(result.prompt, False) or result.correct
        for check in result.checks:
            rel = per_relation.setdefault(check.relation, [0, 0])
            rel[0] += int(check.holds)
            rel[1] += 1
    return Summary(
        rule=rule, n_images=len(judged), n_correct=sum(r.correct for r in judged),
        mean_score=float(np.mean([r.score for r in judged])) if judged else 0.0,
        per_relation=per_relation, per_tag=per_tag, n_prompts=len(prompts),
        n_prompts_any_correct=sum(prompts.values()),
        no_verdict={r.prompt: r.no_verdict for r in results if r.correct is None},
        n_no_verdict=len(results) - len(judged), results=list(results))


@dataclass(frozen=True)
class PairedComparison:
    """Two settings scored on the same (prompt, seed) images: how often each alone was right.

    ``p_value`` is the exact two-sided sign test on the discordant pairs (McNemar's exact test):
    the chance of a split at least this uneven if neither setting were better.
    """

    n_pairs: int
    a_correct: int
    b_correct: int
    a_only: int
    b_only: int

    @property
    def p_value(self) -> float:
        from scipy.stats import binomtest

        discordant = self.a_only + self.b_only
        if discordant == 0:
            return 1.0
        return float(binomtest(self.a_only, discordant, 0.5).pvalue)

    def to_dict(self) -> dict[str, Any]:
        return {"n_pairs": self.n_pairs, "a_correct": self.a_correct, "b_correct": self.b_correct,
                "a_only": self.a_only, "b_only": self.b_only, "p_value": self.p_value}


def paired_comparison(a: dict[str, bool | None], b: dict[str, bool | None]) -> PairedComparison:
    """Compare per-image correctness of two settings (keys identify the same prompt and seed);
    only keys present in both, with a verdict (not None) in both, count."""
    keys = sorted(k for k in set(a) & set(b) if a[k] is not None and b[k] is not None)
    return PairedComparison(
        n_pairs=len(keys), a_correct=sum(bool(a[k]) for k in keys), b_correct=sum(bool(b[k]) for k in keys),
        a_only=sum(bool(a[k]) and not b[k] for k in keys), b_only=sum(bool(b[k]) and not a[k] for k in keys))



def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``scipy.stats.binomtest``); (0, 1) with no trials."""
    from scipy.stats import binomtest

    if total == 0:
        return 0.0, 1.0
    interval = binomtest(successes, total).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)
