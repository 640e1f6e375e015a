"""What each prompt of a diffusers-style call steers: the parser's relations, or the user's own."""
from __future__ import annotations

from dataclasses import dataclass, field

from l2s.parsing import ParsedPrompt, parse_prompt
from l2s.steer import (
    BatchPlan,
    Schedule,
    SteeringDiagnostics,
    SteeringOutcome,
    SteeringPlan,
    parsed_from_relations,
    relations_per_prompt,
    steering_outcome,
)


@dataclass
class PromptSteering:
    """One prompt of a call: its plan, its images' rows in the batch, and what steering did."""

    prompt: str
    rows: range
    plan: SteeringPlan
    schedule: Schedule | None
    diagnostics: SteeringDiagnostics = field(default_factory=SteeringDiagnostics)
    requested: bool = True          # False: the call had steer=False
    warnings: list[str] = field(default_factory=list)   # the call's own (the maps' grid), beside the plan's

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
                "warnings": [*self.plan.warnings, *self.warnings], **self.outcome.to_json(),
                "schedule": self.schedule.to_json() if self.schedule else None, "steps": per_step,
                "last_target_probability": self.diagnostics.last_target_probabilities(len(self.plan.pairs))}


def plan_prompts(prompts: list[str], relations, images_per_prompt: int, plan_one,
                 schedule: Schedule | None) -> list[PromptSteering]:
    """A :class:`PromptSteering` per prompt; ``plan_one(parsed)`` makes a plan from parsed relations.

    Relations come from ``relations`` when given (the parser is skipped), else from the parser.
    ``schedule`` None: nothing is steered, and prompts are not parsed.
    """
    steerings = []
    for k, (prompt, given) in enumerate(zip(prompts, relations_per_prompt(relations, len(prompts)))):
        if schedule is None:       # not steering: the prompt need not even parse
            plan = SteeringPlan(parsed=ParsedPrompt(prompt))
        else:
            parsed = parse_prompt(prompt) if given is None else parsed_from_relations(prompt, given)
            # nothing to steer: no classifier is asked (a pipeline without one makes such images)
            plan = plan_one(parsed) if parsed.steerable else SteeringPlan(parsed=parsed)
        rows = range(k * images_per_prompt, (k + 1) * images_per_prompt)
        steerings.append(PromptSteering(prompt, rows, plan, schedule if plan.steered else None,
                                        requested=schedule is not None))
    return steerings


@dataclass
class SteeredRows:
    """The steered prompts of a call, refined together in one batch: their rows of the call's batch,
    one plan over those rows (the prompt's own when it is the only one, else a :class:`BatchPlan`
    with each prompt's plan once per image) and the schedule they share."""

    steerings: list[PromptSteering]
    rows: slice | list[int]
    plan: SteeringPlan | BatchPlan
    schedule: Schedule

    @classmethod
    def of(cls, steerings: list[PromptSteering]) -> SteeredRows | None:
        """The steered prompts of ``steerings`` (None: none is steered)."""
        steered = [s for s in steerings if s.schedule is not None]
        if not steered:
            return None
        schedule = steered[0].schedule
        # plan_prompts gives every steered prompt the call's one schedule: one loop can serve them all.
        assert all(s.schedule is schedule for s in steered), "the prompts of a call share one schedule"
        indices = [i for s in steered for i in s.rows]
        contiguous = indices == list(range(indices[0], indices[-1] + 1))
        rows = slice(indices[0], indices[-1] + 1) if contiguous else indices
        plan = steered[0].plan if len(steered) == 1 else BatchPlan([s.plan for s in steered for _ in s.rows])
        return cls(steered, rows, plan, schedule)

    @property
    def counts(self) -> int | list[int]:
        """``refine_latents``'s ``num_relations``: the prompt's count, or one per image."""
        return self.plan.counts if isinstance(self.plan, BatchPlan) else len(self.plan.pairs)

    def record(self, diagnostics: SteeringDiagnostics) -> None:
        """Add to each prompt's diagnostics the records of its own images in ``diagnostics`` (the
        batch's), as a call steering that prompt alone would have made them."""
        start = 0
        for steering in self.steerings:
            columns = list(range(start, start + len(steering.rows)))
            steering.diagnostics.records.extend(diagnostics.for_images(columns).records)
            start += len(steering.rows)
