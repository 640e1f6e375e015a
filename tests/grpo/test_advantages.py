"""Top-k filtering, group advantages and the clipped objective."""
import pytest
import torch

from l2s.errors import L2SError
from l2s.grpo import group_advantages, grpo_loss, top_k_mask


def test_top_k_keeps_the_k_highest_and_k_lowest_of_each_group():
    rewards = torch.tensor([[0.5, 0.9, 0.1, 0.4, 0.7, 0.2], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    keep = top_k_mask(rewards, 2)
    assert keep.tolist() == [[False, True, True, False, True, True], [True, True, False, False, True, True]]
    assert top_k_mask(rewards, None).all() and top_k_mask(rewards, 3).all()


def test_top_k_breaks_ties_by_position_deterministically():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    keep = top_k_mask(rewards, 2)
    assert keep.tolist() == [[False, True, False, True, True, False, True, False]]
    assert torch.equal(keep, top_k_mask(rewards, 2))


def test_group_advantages_are_standardised_within_each_group_over_kept_samples():
    torch.manual_seed(0)
    rewards = torch.rand(3, 12)
    keep = top_k_mask(rewards, 3)
    adv = group_advantages(rewards, keep, "group", clip=10.0, eps=0.0)
    assert (adv[~keep] == 0).all()
    for row, mask in zip(adv, keep):
        kept = row[mask]
        assert float(kept.mean()) == pytest.approx(0.0, abs=1e-6)
        assert float(kept.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-5)


def test_a_group_without_spread_gets_zero_and_advantages_are_clipped():
    rewards = torch.tensor([[1.0] * 12, [0.0] * 11 + [1.0]])
    adv = group_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool), "group", clip=2.0)
    assert (adv[0] == 0).all()
    assert float(adv[1, -1]) == 2.0                   # sqrt(11) before the clip
    assert float(adv[1, 0]) == pytest.approx(-1 / 11**0.5, rel=1e-3)


def test_global_spread_is_shared_by_every_group():
    rewards = torch.tensor([[0.0, 2.0] * 6, [0.0, 4.0] * 6])
    keep = torch.ones_like(rewards, dtype=torch.bool)
    adv = group_advantages(rewards, keep, "global", eps=0.0)
    spread = ((1.0 + 4.0) / 2) ** 0.5                  # centred values +-1 and +-2, half each
    torch.testing.assert_close(adv[0, 1], torch.tensor(1.0 / spread))
    torch.testing.assert_close(adv[1, 1], torch.tensor(2.0 / spread))
    with pytest.raises(L2SError, match="unknown advantage std"):
        group_advantages(rewards, keep, "batch")


def test_ratio_one_gives_minus_the_mean_advantage_and_clipping_stops_the_gradient():
    advantages = torch.tensor([1.0, -1.0])
    old = torch.zeros(2)
    same = torch.zeros(2, requires_grad=True)
    terms = grpo_loss(same, old, advantages, clip_range=0.1)
    assert float(terms.loss.detach()) == pytest.approx(0.0) and terms.ratio == 1.0 and terms.clip_fraction == 0.0
    # Past the clip range in the direction each advantage favours: no gradient any more.
    moved = torch.tensor([0.5, -0.5], requires_grad=True)
    grpo_loss(moved, old, advantages, clip_range=0.1).loss.backward()
    assert torch.equal(moved.grad, torch.zeros(2))
    # Against the favoured direction the unclipped term keeps pulling back.
    wrong = torch.tensor([-0.5, 0.5], requires_grad=True)
    grpo_loss(wrong, old, advantages, clip_range=0.1).loss.backward()
    assert float(wrong.grad[0]) < 0 and float(wrong.grad[1]) > 0


def test_kl_enters_with_its_weight():
    lp = torch.zeros(3)
    kl = torch.tensor([1.0, 2.0, 3.0])
    assert float(grpo_loss(lp, lp, torch.zeros(3), 0.1, kl, beta=0.5).loss) == pytest.approx(1.0)
    assert grpo_loss(lp, lp, torch.zeros(3), 0.1, kl, beta=0.5).kl == pytest.approx(2.0)
