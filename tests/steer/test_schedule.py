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
