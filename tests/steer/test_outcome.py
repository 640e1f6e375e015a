"""What a call's report says about steering: what ran, not what was planned."""
import pytest

from l2s.parsing import parse_prompt
from l2s.steer import (
    IterationRecord,
    SteeringDiagnostics,
    SteeringPlan,
    custom_schedule,
    disabled_by,
    steering_outcome,
)

SCHEDULE = custom_schedule(2, steered=[0], iterations=4, step_size=1.0)


def plan(prompt="a cat above a dog"):
    parsed = parse_prompt(prompt)
    return SteeringPlan(parsed=parsed, pairs=[(0, 1)] * len(parsed.triplets))


def diagnostics(*records):
    """(updated, non_finite) per iteration of step 0."""
    return SteeringDiagnostics([IterationRecord(0, k, 0, [1.0], [0.5], updated, non_finite)
                                for k, (updated, non_finite) in enumerate(records)])


def test_steered_when_an_update_was_kept():
    outcome = steering_outcome(plan(), SCHEDULE, diagnostics((True, False), (False, True)))
    assert outcome.steered and outcome.reason is None
    assert (outcome.updates, outcome.rejected) == (1, 1)
    assert outcome.note == "steering 1 relation: cat above dog"
    assert "1 steering update(s) were rejected" in outcome.warning()
    assert steering_outcome(plan(), SCHEDULE, diagnostics((True, False))).warning() is None


@pytest.mark.parametrize("make, reason", [
    (lambda: steering_outcome(plan(), SCHEDULE, diagnostics((False, True), (False, False))),
     "every steering update was rejected"),
    (lambda: steering_outcome(plan(), SCHEDULE, diagnostics((False, False))), "no update was needed"),
    (lambda: steering_outcome(plan(), custom_schedule(2, [], 4, 1.0), diagnostics()), "steers no step"),
    (lambda: steering_outcome(plan(), None, diagnostics(), requested=False), "steering disabled (steer=False)"),
    (lambda: steering_outcome(plan("a cat next to a dog"), None, diagnostics()), "no directional relation"),
])
def test_not_steered_says_why(make, reason):
    outcome = make()
    assert not outcome.steered and reason in outcome.reason
    report = outcome.to_json()
    assert report["steered"] is False and reason in report["note"] and reason in outcome.warning()


def test_a_front_end_names_what_turned_steering_off():
    off = disabled_by(steering_outcome(plan(), None, diagnostics(), requested=False), "--no-steer")
    assert off.reason == "disabled by --no-steer" and off.note == "not steered: disabled by --no-steer"
    rejected = steering_outcome(plan(), SCHEDULE, diagnostics((False, True)))
    assert disabled_by(rejected, "--no-steer") == rejected   # only a disabled call is relabelled
