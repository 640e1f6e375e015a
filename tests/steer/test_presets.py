"""Named schedule presets: what each trades, and a step size replacing the published one."""
import pytest

from l2s.steer import reference_schedule


def test_presets_trade_iterations_as_documented():
    from l2s.steer import PRESETS, preset_steps, schedule_preset

    ref = schedule_preset("reference", "flux-dev", 50)
    assert ref.iterations == reference_schedule("flux-dev", 50).iterations
    front = schedule_preset("front-loaded", "sd21", 50)
    assert front.iterations[:5] == (16,) * 5 and set(front.iterations[5:25]) == {1}
    assert set(front.iterations[25:]) == {0}
    assert ref.max_forwards() / front.max_forwards() == pytest.approx(400 / 100)
    assert schedule_preset("front-loaded-20", "sd21", 50).iterations[:10] == (16,) * 10
    assert schedule_preset("early-exit", "flux-dev", 50).exit_probability == 0.9
    fast = schedule_preset("fast", "flux-dev", preset_steps("fast", "flux-dev", 50))
    assert fast.num_steps == 28 and fast.steered_steps == list(range(14))
    assert preset_steps("fast", "sd21", 50) == 30 and preset_steps("early-exit", "sd21", 50) == 50
    # A model with its own step count (the shapes world: 12 under the flux-dev rule) keeps the
    # preset's fraction, fewer steps than its default, never more.
    assert preset_steps("fast", "flux-dev", 12) == 7 and preset_steps("fast", "flux-dev", 1) == 1
    # schnell: only the initial noise either way
    assert schedule_preset("fast", "flux-schnell", 4).steered_steps == [0]
    assert all(p.trades for p in PRESETS.values())


def test_a_step_size_replaces_the_published_one_in_every_preset():
    from l2s.steer import PRESETS, schedule_preset

    for name in PRESETS:
        published = schedule_preset(name, "flux-dev", 20)
        gentle = schedule_preset(name, "flux-dev", 20, step_size=1.5)
        assert set(gentle.step_sizes) == {1.5} and set(published.step_sizes) == {5.0}
        assert gentle.iterations == published.iterations and gentle.exit_probability == published.exit_probability
    assert set(reference_schedule("sd14", 10, step_size=2.0).step_sizes) == {2.0}
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="step size"):
            reference_schedule("flux-dev", 10, step_size=bad)
    with pytest.raises(ValueError):
        schedule_preset("warp", "flux-dev", 50)
