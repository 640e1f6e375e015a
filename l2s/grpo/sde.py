"""The rectified-flow ODE sampler turned into a reverse SDE with the same marginals, step by step.

FLUX's sampler integrates ``dx = v dt`` from t = 1 (noise) to t = 0 (image). The reverse SDE

    dx = [v + sigma_t^2 / (2t) * (x + (1 - t) v)] dt + sigma_t dw,   sigma_t = a * sqrt(t / (1 - t))

has the same marginal distributions at every t, so a policy-gradient method can treat each
Euler-Maruyama step as a Gaussian policy ``N(mean, std^2)`` whose log-density it can evaluate.
Everything is computed in float32 whatever the model's dtype: the squared differences overflow
half precision. Log-densities are averaged over the latent's dimensions (not summed), which keeps
the per-step log-ratios small; the clip range of the objective is sized for that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SDEStep:
    """One step's result: the next latent, its log-density (per sample, mean over dimensions),
    and the Gaussian it was drawn from (``mean``; ``std``, one value per sample)."""

    sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) tensor as float32 of shape (B, 1, ..., 1), broadcastable against ``like``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    value = value.expand(like.shape[0]) if value.dim() == 0 else value
    return value.reshape(-1, *([1] * (like.dim() - 1)))


def noise_scale(sigma: torch.Tensor, noise_level: float, sigma_cap: float) -> torch.Tensor:
    """sigma_t = a * sqrt(t / (1 - t)); at t = 1 the denominator uses ``1 - sigma_cap`` instead
    (the schedule's second sigma), the first step's only finite choice."""
    finite = torch.where(sigma >= 1.0, torch.full_like(sigma, sigma_cap), sigma)
    return noise_level * torch.sqrt(sigma / (1.0 - finite))


def sde_step(velocity: torch.Tensor, sample: torch.Tensor, sigma, sigma_next, noise_level: float,
             sigma_cap: float, prev_sample: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> SDEStep:
    """One Euler-Maruyama step from ``sigma`` to ``sigma_next`` (< ``sigma``).

    ``velocity`` is the model's prediction at (``sample``, ``sigma``); ``sigma`` / ``sigma_next``
    are scalars or per-sample (B,) tensors. With ``prev_sample`` given, no noise is drawn: the step
    evaluates that latent's log-density (how training re-scores a sampled trajectory); otherwise
    it draws one with ``generator``. ``noise_level`` 0 is the plain Euler ODE step (log-density
    undefined: returned as zeros).
    """
    x, v = sample.float(), velocity.float()
    sigma_t, sigma_n = _per_sample(sigma, x), _per_sample(sigma_next, x)
    dt = sigma_n - sigma_t                                   # negative: time runs from 1 to 0
    if noise_level == 0:
        mean = x + v * dt
        zeros = torch.zeros(x.shape[0], device=x.device)
        return SDEStep(mean if prev_sample is None else prev_sample.float(), zeros, mean, zeros)
    scale2 = noise_scale(sigma_t, noise_level, sigma_cap) ** 2
    mean = x * (1 + scale2 * dt / (2 * sigma_t)) + v * (1 + scale2 * (1 - sigma_t) / (2 * sigma_t)) * dt
    std = torch.sqrt(scale2 * -dt)
    if prev_sample is None:
        noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
        prev_sample = mean + std * noise.to(x.device)
    prev_sample = prev_sample.float()
    log_density = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_TWO_PI
    return SDEStep(prev_sample, log_density.mean(dim=tuple(range(1, x.dim()))), mean, std.flatten())


def step_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussian step policies of equal spread, per sample (mean over dimensions):
    ``|mean - ref_mean|^2 / (2 std^2)``, the exact divergence of the steps themselves."""
    std = _per_sample(std, mean)
    return (((mean.float() - ref_mean.float()) ** 2) / (2 * std**2)).mean(dim=tuple(range(1, mean.dim())))
