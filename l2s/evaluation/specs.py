"""What an image must show and how it fared: relation checks, prompt specs, per-image results.

Multi-relation images are scored strictly: every relation is checked on its own pair; a relation
word found for an earlier pair never satisfies a later one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from l2s.errors import L2SError, UnsupportedRelationError
from l2s.relations import NON_DIRECTIONAL
from .geometry import (
    GENEVAL,
    RULES,
    T2I_COMPBENCH,
    Detection,
    geneval_relations,
    normalise_relation,
    t2i_compbench_image_score,
    t2i_compbench_score,
)


@dataclass(frozen=True)
class RelationCheck:
    """One relation an image must show: ``subject`` is ``relation`` of ``object``."""

    subject: str
    relation: str
    object: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "relation", normalise_relation(self.relation))


@dataclass(frozen=True)
class PromptSpec:
    """A prompt with the relation checks that score it and a tag for grouping results."""

    prompt: str
    checks: tuple[RelationCheck, ...]
    tag: str = "position"

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(self.checks))

    @property
    def objects(self) -> tuple[str, ...]:
        """Object labels the detector must find, in order of first mention in the checks."""
        seen: dict[str, None] = {}
        for check in self.checks:
            seen.setdefault(check.subject)
            seen.setdefault(check.object)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "tag": self.tag, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSpec:
        checks = tuple(RelationCheck(**c) for c in data["checks"])
        return cls(prompt=data["prompt"], checks=checks, tag=data.get("tag", "position"))


@dataclass
class CheckResult:
    """Outcome of one relation check on one image."""

    subject: str
    relation: str
    object: str
    holds: bool | None    # None: no image can show it to a detector (:func:`without_verdict`)
    found: list[str] = field(default_factory=list)  # GenEval relations found (sorted)
    position_score: float | None = None  # T2I-CompBench position score
    reason: str = ""


@dataclass
class ImageResult:
    """Whether one image passes its prompt's checks, with the evidence (``correct`` and ``score``
    None: the prompt can never be judged, ``no_verdict`` says why)."""

    correct: bool | None
    score: float | None
    reason: str
    checks: list[CheckResult]
    detections: dict[str, Detection | None]
    prompt: str = ""
    tag: str = ""
    name: str = ""
    no_verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "prompt": self.prompt, "tag": self.tag, "correct": self.correct,
            "score": self.score, "reason": self.reason, "checks": [asdict(c) for c in self.checks],
            "detections": {k: (d.to_dict() if d else None) for k, d in self.detections.items()},
            **({"no_verdict": self.no_verdict} if self.no_verdict else {}),
        }



def result_from_record(record: dict[str, Any]) -> ImageResult:
    """Inverse of ``ImageResult.to_dict`` (extra keys such as ``meta`` are ignored); a record written
    before prompts got no verdict reads as one written since (:func:`without_verdict`)."""
    detections = {label: (Detection(d["label"], tuple(d["box"]), d["score"]) if d else None)
                  for label, d in record["detections"].items()}
    result = ImageResult(correct=record["correct"], score=record["score"], reason=record["reason"],
                         checks=[CheckResult(**c) for c in record["checks"]], detections=detections,
                         prompt=record.get("prompt", ""), tag=record.get("tag", ""), name=record.get("name", ""),
                         no_verdict=record.get("no_verdict", ""))
    return without_verdict(result)


def without_verdict(result: ImageResult) -> ImageResult:
    """``result`` without a verdict where a check can never be judged (:func:`indistinct_objects`):
    that check's ``holds`` and the image's ``correct`` and ``score`` are None, ``no_verdict`` and
    ``reason`` say why; ``result`` itself when every check can be judged."""
    unjudged = [indistinct_objects(check) for check in result.checks]
    why = next((reason for reason in unjudged if reason), None)
    if why is None:
        return result
    checks = [replace(check, holds=None, reason=reason) if reason else check
              for check, reason in zip(result.checks, unjudged)]
    return replace(result, correct=None, score=None, reason=why, checks=checks, no_verdict=why)


def indistinct_objects(check: RelationCheck | CheckResult) -> str | None:
    """Why no image can show ``check`` to a detector: its subject and object are one label (case and
    spacing aside), and a detector gives one detection per label, so it cannot place one relative to
    the other ("a red circle left of a red circle"). None when it can."""
    if " ".join(check.subject.lower().split()) != " ".join(check.object.lower().split()):
        return None
    return (f"{check.subject!r} {check.relation} {check.object!r} cannot be judged: the detector finds one "
            f"{check.object!r} per image, so it cannot tell the two apart")


def check_rule(rule: str) -> None:
    """Refuse a rule name that is not one of :data:`RULES`."""
    if rule not in RULES:
        raise L2SError(f"unknown evaluation rule {rule!r} (choose from {', '.join(RULES)})")


def score_image(detections: dict[str, Detection | None], checks: Sequence[RelationCheck],
                rule: str = GENEVAL, image_size: tuple[int, int] | None = None) -> ImageResult:
    """Score one image: correct only if every object was detected and every check holds.

    Each check is evaluated on its own subject/object pair (strict; the published evaluation
    lets a relation found for an earlier pair satisfy a later one). ``rule="geneval"``: a check
    holds when its relation is among :func:`geneval_relations`; ``score`` is 1.0 or 0.0.
    ``rule="t2i_compbench"``: a check holds when its position score is 1 (right dominant axis,
    IoU < 0.1, or near enough for non-directional relations); ``score`` is the mean
    :func:`t2i_compbench_image_score` over the checks (``image_size`` = (width, height) for
    the non-directional distance rule).
    """
    check_rule(rule)
    if rule == GENEVAL:
        for check in checks:
            if check.relation in NON_DIRECTIONAL:
                raise UnsupportedRelationError(
                    f"GenEval's rule has no verdict for {check.relation!r}; use rule='{T2I_COMPBENCH}'")
    labels = list(dict.fromkeys(lbl for c in checks for lbl in (c.subject, c.object)))
    missing = [lbl for lbl in labels if detections.get(lbl) is None]
    results = [_check_result(check, detections.get(check.subject), detections.get(check.object), rule, image_size)
               for check in checks]
    correct = not missing and all(r.holds for r in results)
    if correct:
        reason = "ok"
    elif missing:
        reason = "not detected: " + ", ".join(missing)
    else:
        reason = "; ".join(f"{r.subject} not {r.relation} {r.object} ({r.reason})"
                           for r in results if not r.holds)
    if rule == GENEVAL:
        score = float(correct)
    else:
        scores = [t2i_compbench_image_score(c.relation, detections.get(c.subject), detections.get(c.object),
                                            image_size) for c in checks]
        score = float(np.mean(scores)) if scores else 0.0
    return ImageResult(correct=correct, score=score, reason=reason, checks=results,
                       detections={lbl: detections.get(lbl) for lbl in labels})


def _check_result(check: RelationCheck, det_s: Detection | None, det_o: Detection | None, rule: str,
                  image_size: tuple[int, int] | None) -> CheckResult:
    """One check on its own subject/object pair."""
    if det_s is None or det_o is None:
        absent = [lbl for lbl, d in ((check.subject, det_s), (check.object, det_o)) if d is None]
        return CheckResult(check.subject, check.relation, check.object, False,
                           reason="not detected: " + ", ".join(absent))
    if rule == GENEVAL:
        found = sorted(geneval_relations(det_s.box, det_o.box))
        holds = check.relation in found
        return CheckResult(check.subject, check.relation, check.object, holds, found=found,
                           reason=_why_not(holds, check, f"found {', '.join(found) or 'no relation'}"))
    position = t2i_compbench_score(check.relation, det_s.box, det_o.box, image_size=image_size)
    holds = position >= 1.0
    return CheckResult(check.subject, check.relation, check.object, holds, position_score=position,
                       reason=_why_not(holds, check, f"position score {position:.3f}"))


def _why_not(holds: bool, check: RelationCheck, measured: str) -> str:
    """A failed check's reason: that it can never hold when its objects are one label (one box for
    both; "found no relation" would read as the image's fault), else what was measured."""
    return "" if holds else indistinct_objects(check) or measured
