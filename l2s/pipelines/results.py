"""What a steered call returns: its images and a report of what steering did to each."""
from __future__ import annotations

from dataclasses import dataclass, field

from l2s.steer import Schedule, SteeringDiagnostics, SteeringOutcome, SteeringPlan


@dataclass
class SteeringResult:
    images: list  # PIL images
    plan: SteeringPlan  # the prompt's plan (a batch of prompts: the first image's; see ``plans``)
    schedule: Schedule | None
    diagnostics: SteeringDiagnostics
    timings: dict[str, float]
    engine: dict | None = None        # the plain-step engine used: {"name", "reason"}
    sampling: dict = field(default_factory=dict)  # steps, size, guidance and model-specific options in effect
    # How steered steps ran: {"mode", "capture_backend"}; the backend None where the mode has its own
    # capture (reference).
    execution: dict = field(default_factory=dict)
    outcome: SteeringOutcome | None = None  # what steering did (a batch: the first image's; see ``outcomes``)
    plans: list[SteeringPlan] | None = None          # a batch of prompts: one plan per image
    outcomes: list[SteeringOutcome] | None = None    # ... and what steering did to each
    warnings: list[str] = field(default_factory=list)  # the call's own (base model, maps' grid), steered images'

    def report(self) -> dict:
        """The call's report: one prompt's plan, schedule and every iteration's per-image values
        (a batch of prompts: ``{"images": reports()}``)."""
        if self.plans is not None:
            return {"images": self.reports()}
        return self._report(self.plan, self.outcome, self.diagnostics)

    def reports(self) -> list[dict]:
        """One report per image, as a call for that image alone would give it."""
        plans = self.plans or [self.plan] * len(self.images)
        outcomes = self.outcomes or [self.outcome] * len(self.images)
        return [self._report(plan, outcome, self.diagnostics.for_image(i) if plan.steered else SteeringDiagnostics())
                for i, (plan, outcome) in enumerate(zip(plans, outcomes))]

    def _report(self, plan: SteeringPlan, outcome: SteeringOutcome | None,
                diagnostics: SteeringDiagnostics) -> dict:
        per_step: dict[int, list[dict]] = {}
        for r in diagnostics.records:
            per_step.setdefault(r.step, []).append(
                {"iteration": r.iteration, "relation": r.relation, "loss": r.loss,
                 "target_probability": r.target_probability, "updated": r.updated,
                 "non_finite": r.non_finite})
        return {
            **plan.to_json(),
            "warnings": [*plan.warnings, *(self.warnings if plan.steered else [])],
            **(outcome.to_json() if outcome else {}),
            "schedule": self.schedule.to_json() if self.schedule and plan.steered else None,
            "steps": {str(k): v for k, v in per_step.items()},
            "last_target_probability": diagnostics.last_target_probabilities(len(plan.pairs)),
            "non_finite_events": len(diagnostics.non_finite_events()),
            "plain_step_engine": self.engine,
            "sampling": self.sampling,
            "execution": self.execution,
            "timings_s": self.timings,
        }
