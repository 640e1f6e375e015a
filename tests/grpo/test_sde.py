"""The SDE step: its ODE limit, its Gaussian log-density, its marginals, the step KL."""
import math

import pytest
import torch

from l2s.grpo import noise_scale, sde_step, step_kl


def test_noise_level_zero_is_the_euler_step_of_the_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    x, v = torch.randn(3, 16, 12), torch.randn(3, 16, 12)
    expected = scheduler.step(v, scheduler.timesteps[1], x, return_dict=False)[0]
    step = sde_step(v, x, scheduler.sigmas[1], scheduler.sigmas[2], 0.0, float(scheduler.sigmas[1]))
    torch.testing.assert_close(step.sample, expected)


def test_log_prob_is_the_mean_gaussian_log_density_of_the_drawn_latent():
    torch.manual_seed(0)
    x, v = torch.randn(4, 8, 6), torch.randn(4, 8, 6)
    generator = torch.Generator().manual_seed(1)
    step = sde_step(v, x, 0.6, 0.5, 0.7, 0.9, generator=generator)
    normal = torch.distributions.Normal(step.mean, step.std.reshape(-1, 1, 1))
    torch.testing.assert_close(step.log_prob, normal.log_prob(step.sample).mean(dim=(1, 2)))
    # Re-scoring the same latent (as training does) gives the same value, bit for bit.
    again = sde_step(v, x, 0.6, 0.5, 0.7, 0.9, prev_sample=step.sample)
    assert torch.equal(again.log_prob, step.log_prob)
    # The std is sigma_t * sqrt(-dt) with sigma_t = a sqrt(t / (1 - t)).
    torch.testing.assert_close(step.std, torch.full((4,), 0.7 * math.sqrt(0.6 / 0.4) * math.sqrt(0.1)))


def test_the_first_step_at_t_one_is_finite():
    x, v = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    step = sde_step(v, x, 1.0, 0.9, 0.7, 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(step.sample).all() and torch.isfinite(step.log_prob).all()
    assert float(noise_scale(torch.tensor(1.0), 0.7, 0.9)) == pytest.approx(0.7 * math.sqrt(1 / 0.1))


@pytest.mark.parametrize("noise_level", [0.0, 0.7])
def test_sampling_with_the_exact_velocity_of_gaussian_data_keeps_its_marginals(noise_level):
    # Data x0 ~ N(0, c^2), x_t = (1 - t) x0 + t eps: the exact velocity E[eps - x0 | x_t] is linear in
    # x_t. Integrating the SDE (any noise level) from t = 1 must end with std c, and pass through the
    # interpolation's std sqrt((1 - t)^2 c^2 + t^2) on the way: a sign error in the drift would not.
    c, steps, n = 0.5, 200, 40000
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=generator)
    for j in range(steps):
        t = float(sigmas[j])
        variance = (1 - t) ** 2 * c**2 + t**2
        v = x * (t - (1 - t) * c**2) / variance
        x = sde_step(v, x, t, float(sigmas[j + 1]), noise_level, float(sigmas[1]), generator=generator).sample
        if j + 1 == steps // 2:
            halfway = math.sqrt(0.25 * c**2 + 0.25)
            assert float(x.std()) == pytest.approx(halfway, rel=0.03)
    assert float(x.std()) == pytest.approx(c, rel=0.04)


def test_step_kl_is_zero_for_equal_means_and_the_gaussian_kl_otherwise():
    mean = torch.randn(3, 5, 2)
    std = torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(step_kl(mean, mean, std), torch.zeros(3))
    other = mean + 0.05
    p = torch.distributions.Normal(mean, std.reshape(-1, 1, 1))
    q = torch.distributions.Normal(other, std.reshape(-1, 1, 1))
    torch.testing.assert_close(step_kl(mean, other, std), torch.distributions.kl_divergence(p, q).mean(dim=(1, 2)))
