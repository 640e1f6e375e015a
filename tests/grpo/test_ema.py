"""The adapter's moving average: a constant decay from the first update, every ``every``-th step."""
import torch

from l2s.grpo import AdapterEMA


def test_every_update_uses_the_full_decay_from_the_first_one():
    """Pinned because diffusers' EMAModel differs: its first update copies the weights (decay 0) and the
    next ones use min(decay, (1 + n) / (10 + n)), which stays below 0.9 until its 81st update."""
    weight = torch.nn.Parameter(torch.zeros(3))
    ema = AdapterEMA({"w": weight}, decay=0.9, every=2)
    with torch.no_grad():
        weight.fill_(1.0)
    ema.step(1)  # not an update: 1 is not a multiple of 2
    assert torch.equal(ema.shadow["w"], torch.zeros(3)) and ema.updates == 0
    ema.step(2)
    ema.step(4)
    expected = torch.zeros(3).lerp_(torch.ones(3), 0.1).lerp_(torch.ones(3), 0.1)
    assert torch.equal(ema.shadow["w"], expected) and ema.updates == 2
