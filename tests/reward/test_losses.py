"""The pairwise losses: signs of their gradients, and the uncertainty loss against plain Bradley-Terry."""
from __future__ import annotations

import math

import pytest
import torch

from l2s.reward import bradley_terry_loss, pair_loss, uncertainty_loss, win_probability


def _grads(loss_fn, *values):
    tensors = [torch.tensor([v], requires_grad=True) for v in values]
    loss_fn(*tensors).backward()
    return [t.grad.item() for t in tensors]


def test_bradley_terry_pushes_the_winner_up_and_the_loser_down():
    for w, l in ((0.0, 0.0), (2.0, -1.0), (-3.0, 1.0)):
        grad_w, grad_l = _grads(bradley_terry_loss, w, l)
        assert grad_w < 0 < grad_l and grad_w == pytest.approx(-grad_l)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))


def test_uncertainty_loss_with_equal_spreads_is_bradley_terry_like():
    # With s_w = s_l = s, P(win) = Phi(d / (s sqrt 2)); s^2 = 4/pi makes it the probit twin of
    # sigmoid(d) (the logistic is within 0.02 of Phi(d sqrt(pi/8)) everywhere).
    d = torch.linspace(-6, 6, 121)
    log_var = torch.full_like(d, math.log(4 / math.pi))
    p = win_probability(d, log_var, torch.zeros_like(d), log_var)
    assert (p - torch.sigmoid(d)).abs().max() < 0.02
    # It depends on the means only through their difference, falls as the winner pulls ahead,
    # and its gradients on the means have Bradley-Terry's signs.
    shift = uncertainty_loss(d + 5, log_var, torch.full_like(d, 5.0), log_var)
    assert torch.allclose(shift, uncertainty_loss(d, log_var, torch.zeros_like(d), log_var), atol=1e-6)
    losses = torch.stack([uncertainty_loss(x[None], log_var[:1], torch.zeros(1), log_var[:1]) for x in d])
    assert (losses[1:] < losses[:-1]).all()
    grad_w, _, grad_l, _ = _grads(uncertainty_loss, 0.5, 0.0, 1.0, 0.0)
    assert grad_w < 0 < grad_l


def test_uncertainty_widens_the_spread_of_a_pair_it_gets_wrong_and_narrows_one_it_gets_right():
    _, grad_var_wrong, _, _ = _grads(uncertainty_loss, -1.0, 0.0, 1.0, 0.0)
    _, grad_var_right, _, _ = _grads(uncertainty_loss, 1.0, 0.0, -1.0, 0.0)
    assert grad_var_wrong < 0 < grad_var_right   # gradient descent raises the first spread, lowers the second


def test_pair_loss_dispatches_and_refuses_unknown_kinds():
    w, l = (torch.tensor([1.0]), torch.tensor([0.0])), (torch.tensor([0.0]), torch.tensor([0.0]))
    assert pair_loss("bt", w, l) == bradley_terry_loss(w[0], l[0])
    assert pair_loss("uncertainty", w, l) == uncertainty_loss(w[0], w[1], l[0], l[1])
    with pytest.raises(ValueError):
        pair_loss("hinge", w, l)
