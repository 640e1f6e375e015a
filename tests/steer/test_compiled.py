"""The compiled steering evaluation says when a pass compiles (the progress bar stands still meanwhile)."""
import logging

import torch

from l2s.steer.compiled import CompiledSteering


def test_a_cold_compile_is_said_once_per_shape(caplog):
    compiled = CompiledSteering(lambda z: (z * z).sum(dim=1), backend="eager")
    with caplog.at_level(logging.WARNING, logger="l2s.steer.compiled"):
        for shape in ((1, 4), (1, 4), (2, 4)):
            z = torch.ones(shape, requires_grad=True)
            compiled(z).sum().backward()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and compiled.calls == 3
    assert lines[0].startswith("compiling the steering evaluation for latents of shape (1, 4)")
    assert "shape (2, 4)" in lines[1]
