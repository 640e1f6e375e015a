"""Schedules: the published settings per family, and custom schedules."""
import pytest

from l2s.steer import custom_schedule, reference_schedule


def test_reference_schedules_follow_the_published_settings():
    dev = reference_schedule("flux-dev", 50)
    assert dev.steered_steps == list(range(25))
    assert set(dev.iterations[:25]) == {16} and set(dev.iterations[25:]) == {0}
    assert set(dev.step_sizes) == {5.0}
    assert dev.loss_targets[:4] == (1e-5, 3e-5, 5e-5, 7e-5) and dev.loss_targets[-1] == 7e-5
    assert dev.max_forwards() == 25 * 16

    schnell = reference_schedule("flux-schnell", 4)
    assert schnell.steered_steps == [0]          # only the initial noise is optimised
    assert schnell.max_forwards() == 16

    assert set(reference_schedule("sd14", 50).step_sizes) == {7.5}
    assert set(reference_schedule("sd21", 50).step_sizes) == {5.0}
    with pytest.raises(ValueError):
        reference_schedule("sdxl", 50)


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError):
        custom_schedule(4, steered=[0], iterations=1, step_size=-1.0)
    with pytest.raises(ValueError, match=r"steered steps \[-1, 7\] are outside 0..3 of a 4-step schedule"):
        custom_schedule(4, steered=[0, 7, -1], iterations=1, step_size=1.0)
    with pytest.raises(ValueError, match="num_steps must be a positive integer, got 0"):
        custom_schedule(0, steered=[], iterations=1, step_size=1.0)
    assert custom_schedule(4, steered=[3], iterations=2, step_size=1.0).iterations == (0, 0, 0, 2)
    assert custom_schedule(3, steered=(i for i in [0, 1]), iterations=2, step_size=1.0).iterations == (2, 2, 0)


@pytest.mark.parametrize("change, message", [
    (dict(step_sizes=(-1.0, 1.0)), r"step_sizes\[0\] must be finite and >= 0 \(> 0 on a steered step\), got -1.0"),
    (dict(step_sizes=(0.0, 1.0)), r"step_sizes\[0\]"),
    (dict(step_sizes=(float("nan"), 1.0)), r"step_sizes\[0\]"),
    (dict(loss_targets=(float("nan"), 1e-5)), r"loss_targets\[0\] must be a finite number >= 0"),
    (dict(loss_targets=(-1.0, 1e-5)), r"loss_targets\[0\]"),
    (dict(iterations=(1.5, 0)), r"iterations\[0\] must be a whole number >= 0, got 1.5"),
    (dict(iterations=(-2, 0)), r"iterations\[0\]"),
    (dict(iterations=(True, 0)), r"iterations\[0\]"),
    (dict(exit_probability=2.0), r"exit_probability must be in \(0, 1\] or None, got 2.0"),
    (dict(exit_probability=float("nan")), r"exit_probability"),
    (dict(iterations=(), step_sizes=(), loss_targets=()), "at least one denoising step"),
])
def test_a_schedule_refuses_settings_that_would_steer_wrongly(change, message):
    from l2s.steer import Schedule

    fields = {**dict(name="x", iterations=(4, 0), step_sizes=(1.0, 1.0), loss_targets=(1e-5, 1e-5)), **change}
    with pytest.raises(ValueError, match=message):
        Schedule(**fields)


def test_a_schedule_keeps_plain_numbers_and_takes_numpy_ones():
    import numpy as np

    from l2s.steer import Schedule

    schedule = Schedule("x", [np.int64(2), 0], [np.float32(0.5), 0.0], [1e-5, 1e-5], exit_probability=np.float64(0.9))
    assert schedule.iterations == (2, 0) and type(schedule.iterations[0]) is int
    assert schedule.step_sizes == (0.5, 0.0) and schedule.exit_probability == 0.9   # 0 is fine on a plain step
    assert custom_schedule(np.int64(3), [0], 1, 1.0).num_steps == 3


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_published_schedules_need_a_positive_step_count(steps):
    from l2s.steer import schedule_preset

    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        reference_schedule("flux-dev", steps)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        schedule_preset("fast", "flux-dev", steps)
