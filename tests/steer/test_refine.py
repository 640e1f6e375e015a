"""The refinement loop, on synthetic differentiable losses (no diffusion model)."""
import math

import pytest
import torch

import l2s.steer.refine as refine_module
from l2s.steer import SteeringDiagnostics, custom_schedule, published_loss_target, refine_latents


def _quadratic_log_prob(centres):
    """log p = -||z - c_r||^2 per image: its maximum is at relation r's centre."""
    def log_prob(z, r):
        return -((z - centres[r]) ** 2).flatten(1).sum(1)
    return log_prob


def test_loop_runs_each_iteration_with_an_update_and_lowers_the_loss():
    torch.manual_seed(0)
    z0 = torch.randn(1, 3, 4, 4)
    centre = torch.zeros_like(z0)
    schedule = custom_schedule(4, steered=[0], iterations=4, step_size=0.1)
    diag = SteeringDiagnostics()
    z = refine_latents(z0, 0, _quadratic_log_prob([centre]), schedule, 1, diag)
    records = diag.for_step(0)
    assert [r.iteration for r in records] == [0, 1, 2, 3]        # one evaluation per iteration
    assert all(r.updated for r in records)                        # the last update is applied blind
    losses = [r.loss[0] for r in records]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    # closed form: each update multiplies (z - c) by (1 - 2 * alpha)
    assert torch.allclose(z, z0 * 0.8 ** 4, atol=1e-6)
    assert not z.requires_grad


def test_published_update_has_no_normalisation_or_clipping():
    z0 = torch.full((1, 2), 10.0)
    schedule = custom_schedule(1, steered=[0], iterations=1, step_size=0.25)
    z = refine_latents(z0, 0, _quadratic_log_prob([torch.zeros(1, 2)]), schedule, 1)
    # grad of ||z||^2 is 2z = 20: z - 0.25 * 20 = 5 exactly
    assert torch.allclose(z, torch.full((1, 2), 5.0))


def test_multiple_relations_alternate_and_restart_each_step():
    centres = [torch.zeros(1, 2), torch.ones(1, 2), -torch.ones(1, 2)]
    schedule = custom_schedule(3, steered=[0, 1], iterations=5, step_size=0.01)
    diag = SteeringDiagnostics()
    z = torch.full((1, 2), 3.0)
    for step in (0, 1):
        z = refine_latents(z, step, _quadratic_log_prob(centres), schedule, 3, diag)
    assert [r.relation for r in diag.for_step(0)] == [0, 1, 2, 0, 1]
    assert [r.relation for r in diag.for_step(1)] == [0, 1, 2, 0, 1]


def test_each_relations_last_probability_is_that_of_its_last_iteration():
    centres = [torch.zeros(1, 2), torch.ones(1, 2), -torch.ones(1, 2)]
    schedule = custom_schedule(2, steered=[0], iterations=5, step_size=0.01)
    diag = SteeringDiagnostics()
    refine_latents(torch.full((1, 2), 3.0), 0, _quadratic_log_prob(centres), schedule, 3, diag)
    records = diag.for_step(0)                      # relations 0, 1, 2, 0, 1
    assert diag.last_target_probabilities(3) == [records[3].target_probability, records[4].target_probability,
                                                 records[2].target_probability]
    assert SteeringDiagnostics().last_target_probabilities(2) == [None, None]

def test_early_exit_when_loss_reaches_target():
    # log p = 0 exactly at the centre: loss 0 <= any target -> stop without updating.
    schedule = custom_schedule(1, steered=[0], iterations=15, step_size=0.1)
    diag = SteeringDiagnostics()
    z0 = torch.zeros(1, 2)
    z = refine_latents(z0, 0, _quadratic_log_prob([torch.zeros(1, 2)]), schedule, 1, diag)
    assert len(diag.records) == 1 and not diag.records[0].updated
    assert torch.equal(z, z0)
    assert published_loss_target(0) == 1e-5 and published_loss_target(30) == 7e-5


def test_exit_probability_threshold_stops_a_step():
    def log_prob(z, r):
        return torch.log(torch.sigmoid(z.sum(1)))      # p rises as z grows
    schedule = custom_schedule(1, steered=[0], iterations=50, step_size=1.0, exit_probability=0.9)
    diag = SteeringDiagnostics()
    refine_latents(torch.zeros(1, 1), 0, log_prob, schedule, 1, diag)
    assert diag.records[-1].target_probability[0] >= 0.9
    assert len(diag.records) < 51


def test_batch_images_are_independent_and_stop_individually():
    centre = torch.zeros(2, 2)
    z0 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])     # image 0 already satisfied
    schedule = custom_schedule(1, steered=[0], iterations=3, step_size=0.1)
    z = refine_latents(z0, 0, _quadratic_log_prob([centre]), schedule, 1)
    assert torch.equal(z[0], z0[0])                   # untouched
    single = refine_latents(z0[1:], 0, _quadratic_log_prob([centre[1:]]), schedule, 1)
    assert torch.allclose(z[1:], single)              # same as steering it alone


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_skips_the_update_and_is_recorded(bad):
    def log_prob(z, r):
        return z.sum(1) * bad
    schedule = custom_schedule(1, steered=[0], iterations=5, step_size=0.1)
    diag = SteeringDiagnostics()
    z0 = torch.ones(1, 2)
    z = refine_latents(z0, 0, log_prob, schedule, 1, diag)
    assert torch.equal(z, z0)
    assert len(diag.non_finite_events()) == 1 and not diag.records[0].updated


def test_non_finite_gradient_skips_the_update():
    def log_prob(z, r):
        return -torch.sqrt(z.abs()).sum(1) - 1.0     # d/dz sqrt|z| is inf at 0
    schedule = custom_schedule(1, steered=[0], iterations=5, step_size=0.1)
    diag = SteeringDiagnostics()
    z0 = torch.zeros(1, 2)
    assert torch.equal(refine_latents(z0, 0, log_prob, schedule, 1, diag), z0)
    assert diag.records[0].non_finite


@pytest.mark.parametrize("exit_probability", [None, 0.5])
def test_one_host_read_per_iteration_and_no_backward_after_the_exit(exit_probability, monkeypatch):
    torch.manual_seed(0)
    centres = [torch.randn(3, 4), torch.randn(3, 4)]
    forwards, backwards, reads = [], [], []

    def log_prob(z, r):                      # images reach the target at different iterations
        forwards.append(r)
        z.register_hook(lambda g: backwards.append(r))
        return torch.nn.functional.logsigmoid(25.0 - 5.0 * ((z - centres[r]) ** 2).sum(1))

    original = refine_module.any_active
    monkeypatch.setattr(refine_module, "any_active", lambda active: reads.append(1) or original(active))
    z0 = torch.randn(3, 4) * 2
    schedule = custom_schedule(1, steered=[0], iterations=40, step_size=0.05,
                               exit_probability=exit_probability)
    diag = SteeringDiagnostics()
    refine_latents(z0, 0, log_prob, schedule, 2, diag)
    assert len(reads) == len(forwards) == len(diag.records)      # one read per evaluation
    assert len(forwards) < schedule.iterations[0]                 # every image exited early ...
    assert len(backwards) == len(forwards) - 1                    # ... and the exit ran no backward
    assert not diag.records[-1].updated and all(r.updated for r in diag.records[:-1])


def test_the_update_runs_on_a_float32_master_latent():
    # A bf16 latent of magnitude 1 cannot hold a step of 1e-3: bf16 has 8 bits of mantissa.
    def log_prob(z, r):
        return -(z.float() * 1e-3).sum(1) - 1.0

    schedule = custom_schedule(1, steered=[0], iterations=8, step_size=1.0)
    z0 = torch.ones(1, 4, dtype=torch.bfloat16)
    z = refine_latents(z0, 0, log_prob, schedule, 1)
    assert z.dtype == torch.bfloat16
    assert torch.equal(z, torch.full((1, 4), 1.0 - 8e-3).to(torch.bfloat16))   # 8 steps add up
    assert not torch.equal(z, z0)


def test_an_image_that_reached_its_target_stays_done_for_the_step():
    # relation 0 is satisfied at once, relation 1 never: batch-1 published loop stops at k=0.
    def log_prob(z, r):
        return torch.zeros(z.shape[0]) + 0.0 * z.sum(1) if r == 0 else -10.0 + 0.0 * z.sum(1)
    schedule = custom_schedule(1, steered=[0], iterations=6, step_size=0.1)
    diag = SteeringDiagnostics()
    refine_latents(torch.ones(2, 2), 0, log_prob, schedule, 2, diag)
    assert len(diag.records) == 1 and not diag.records[0].updated


def test_an_update_whose_latent_is_not_finite_is_not_made():
    # A step of 1e5 is fine in float32 but overflows a float16 latent: the update is refused.
    def log_prob(z, r):
        return -z.float().sum(1) - 1.0

    schedule = custom_schedule(1, steered=[0], iterations=3, step_size=1e5)
    diag = SteeringDiagnostics()
    z0 = torch.ones(1, 4, dtype=torch.float16)
    assert torch.equal(refine_latents(z0, 0, log_prob, schedule, 1, diag), z0)
    assert diag.records[0].non_finite and not diag.records[0].updated
    assert len(diag.non_finite_events()) == 1


def test_an_update_that_leads_to_a_non_finite_loss_is_undone():
    # log p is NaN wherever |z| > 10: a step that lands there is taken back, per image.
    def log_prob(z, r):
        value = -(z ** 2).sum(1)
        return torch.where((z.abs() > 10).any(1), torch.full_like(value, math.nan), value)

    schedule = custom_schedule(1, steered=[0], iterations=6, step_size=10.0)
    diag = SteeringDiagnostics()
    z0 = torch.tensor([[1.0], [0.1]])
    z = refine_latents(z0, 0, log_prob, schedule, 1, diag)
    # Image 0: 1 -> -19 (NaN next): undone, stays 1. Image 1: 0.1 -> -1.9 (kept) -> 36.1 (undone).
    assert torch.allclose(z, torch.tensor([[1.0], [-1.9]]))
    # Iteration 0 is kept for image 1 only, iteration 1's update is undone, then both images stop.
    assert [r.updated for r in diag.records] == [True, False, False, False]
    assert [r.non_finite for r in diag.records] == [False, True, True, False]


def test_the_last_update_of_a_step_is_refused_when_its_latent_would_overflow_the_model():
    # One iteration: the update has no later loss to check it. A latent of 1e25 is finite in float32,
    # but its squares (what a normalisation computes) are not: the update is not made.
    def log_prob(z, r):
        return -z.sum(1) - 1.0

    z0 = torch.ones(1, 4)
    diag = SteeringDiagnostics()
    assert torch.equal(refine_latents(z0, 0, log_prob, custom_schedule(1, [0], 1, 1e25), 1, diag), z0)
    assert diag.records[0].non_finite and not diag.records[0].updated
    assert torch.equal(refine_latents(z0, 0, log_prob, custom_schedule(1, [0], 1, 1e3), 1), z0 - 1e3)
