"""What each prompt of a diffusers-style call steers: the parser's relations, or the user's own."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from l2s.errors import PromptError, UnsupportedRelationError
from l2s.parsing import ParsedPrompt, Triplet, parse_prompt
from l2s.relations import NEUTRAL, canonical_class
from l2s.steer import (
    Schedule,
    SteeringDiagnostics,
    SteeringOutcome,
    SteeringPlan,
    steering_outcome,
)
from l2s.tokens import first_occurrence_span

# One relation as a user writes it: ("dog", "left of", "cat") or {"subject", "relation", "object"}.
RelationLike = Sequence[str] | dict


def parsed_from_relations(prompt: str, relations: Sequence[RelationLike]) -> ParsedPrompt:
    """``relations`` as if the parser had found them in ``prompt`` (each object must occur in it).

    A relation is ``(subject, relation, object)`` or a dict with those keys; the relation may be
    spelled as a classifier class ("to the left of") or canonically ("left of").
    """
    triplets = []
    for item in relations:
        if isinstance(item, dict):
            item = (item.get("subject"), item.get("relation"), item.get("object"))
        if isinstance(item, str) or len(item) != 3 or not all(isinstance(x, str) and x.strip() for x in item):
            raise PromptError(f"a relation is (subject, relation, object), three non-empty strings; got {item!r}")
        subject, relation, obj = (x.strip() for x in item)
        canonical = canonical_class(relation)
        if canonical == NEUTRAL:
            raise UnsupportedRelationError(f"{relation!r} is not a spatial relation that can be steered")
        triplets.append(Triplet(subject, canonical, obj, first_occurrence_span(prompt, subject), (0, 0),
                                first_occurrence_span(prompt, obj)))
    return ParsedPrompt(prompt, triplets=triplets)


def _per_prompt(relations, count: int) -> list:
    """``relations`` for each of ``count`` prompts: one list for all, or one list per prompt."""
    if relations is None:
        return [None] * count
    relations = list(relations)
    nested = bool(relations) and all(isinstance(r, (list, tuple)) and r and not isinstance(r[0], str)
                                     for r in relations)
    if not nested:
        return [relations] * count
    if len(relations) != count:
        raise PromptError(f"relations has {len(relations)} lists for {count} prompts; give one list per "
                          "prompt, or one list for all")
    return relations


@dataclass
class PromptSteering:
    """One prompt of a call: its plan, its images' rows in the batch, and what steering did."""

    prompt: str
    rows: range
    plan: SteeringPlan
    schedule: Schedule | None
    diagnostics: SteeringDiagnostics = field(default_factory=SteeringDiagnostics)
    requested: bool = True          # False: the call had steer=False

    @property
    def steered(self) -> bool:
        """Whether steering was planned for this prompt (``outcome``: whether it ran)."""
        return self.schedule is not None

    @property
    def outcome(self) -> SteeringOutcome:
        """What steering did: ``steered`` only when an update was kept, else the reason."""
        return steering_outcome(self.plan, self.schedule, self.diagnostics, self.requested)

    def to_json(self) -> dict:
        """The plan, the schedule and per steered step the records of every refinement iteration."""
        per_step: dict[str, list[dict]] = {}
        for r in self.diagnostics.records:
            per_step.setdefault(str(r.step), []).append(
                {"iteration": r.iteration, "relation": r.relation, "loss": r.loss,
                 "target_probability": r.target_probability, "updated": r.updated,
                 "non_finite": r.non_finite})
        return {"prompt": self.prompt, "images": list(self.rows), **self.plan.to_json(),
                **self.outcome.to_json(), "schedule": self.schedule.to_json() if self.schedule else None,
                "steps": per_step}


def plan_prompts(prompts: list[str], relations, images_per_prompt: int, plan_one,
                 schedule: Schedule | None) -> list[PromptSteering]:
    """A :class:`PromptSteering` per prompt; ``plan_one(parsed)`` makes a plan from parsed relations.

    Relations come from ``relations`` when given (the parser is skipped), else from the parser.
    ``schedule`` None: nothing is steered, and prompts are not parsed.
    """
    steerings = []
    for k, (prompt, given) in enumerate(zip(prompts, _per_prompt(relations, len(prompts)))):
        if schedule is None:       # not steering: the prompt need not even parse
            plan = SteeringPlan(parsed=ParsedPrompt(prompt))
        else:
            parsed = parse_prompt(prompt) if given is None else parsed_from_relations(prompt, given)
            plan = plan_one(parsed)
        rows = range(k * images_per_prompt, (k + 1) * images_per_prompt)
        steerings.append(PromptSteering(prompt, rows, plan, schedule if plan.steered else None,
                                        requested=schedule is not None))
    return steerings
