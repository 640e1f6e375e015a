"""What steering did in one call, as opposed to what was planned: for reports and warnings.

A prompt may plan steering and still end unsteered: the caller turned it off, the schedule steers
no step, every image was at its target before any update, or every update was rejected (a
non-finite loss, gradient or latent, see :func:`~l2s.steer.refine.refine_latents`). Reports
say ``"steered": false`` with the reason, so an image is never called steered when it is not.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .plan import SteeringPlan
from .refine import SteeringDiagnostics
from .schedule import Schedule

DISABLED = "steering disabled (steer=False)"


@dataclass(frozen=True)
class SteeringOutcome:
    steered: bool
    reason: str | None      # why not steered; None when steered
    updates: int            # iterations whose update was kept (counted once per iteration)
    rejected: int           # iterations whose update was rejected or undone for non-finite values
    note: str = ""          # one line for the report: what was steered, or why nothing was

    def to_json(self) -> dict:
        return {"steered": self.steered, "steered_reason": self.reason, "note": self.note,
                "steering_updates": self.updates, "rejected_updates": self.rejected}

    def warning(self) -> str | None:
        """One line for the user when steering did not do what was asked, else None."""
        if not self.steered:
            return f"not steered: {self.reason}"
        if self.rejected:
            return (f"{self.rejected} steering update(s) were rejected for non-finite (or overflowing) "
                    f"values (loss, gradient or latent); {self.updates} were kept")
        return None


def steering_outcome(plan: SteeringPlan, schedule: Schedule | None, diagnostics: SteeringDiagnostics,
                     requested: bool = True) -> SteeringOutcome:
    """The outcome of a call that planned ``plan`` with ``schedule`` and recorded ``diagnostics``."""
    updates = sum(r.updated for r in diagnostics.records)
    rejected = len(diagnostics.non_finite_events())
    planned = plan.parsed.describe()
    if not requested:
        reason = DISABLED
    elif not plan.steered:
        return SteeringOutcome(False, planned, updates, rejected, planned)
    elif schedule is None or not any(schedule.is_steered(s) for s in range(schedule.num_steps)):
        reason = "the schedule steers no step"
    elif updates == 0 and rejected:
        reason = (f"every steering update was rejected: non-finite (or overflowing) loss, gradient or latent "
                  f"({rejected} time(s); try a smaller step size, or check the classifier)")
    elif updates == 0:
        reason = "no update was needed: every steered step started at its target"
    else:
        return SteeringOutcome(True, None, updates, rejected, planned)
    return SteeringOutcome(False, reason, updates, rejected, f"not steered: {reason}")


def disabled_by(outcome: SteeringOutcome, what: str) -> SteeringOutcome:
    """``outcome`` of a call with steering turned off, its reason naming ``what`` turned it off."""
    reason = f"disabled by {what}"
    return replace(outcome, reason=reason, note=f"not steered: {reason}") if outcome.reason == DISABLED else outcome
