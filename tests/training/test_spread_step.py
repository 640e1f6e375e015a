"""The data-parallel training step in the default suite: two gloo processes under DDP take the
one-process step, a rank whose last slice is empty included (the rest of tests/cli/test_spread.py,
marked slow, covers whole runs, resumes and killed ranks)."""
from __future__ import annotations

import pytest

from tests.cli.test_spread import _log, _train, _train_data


def test_two_processes_take_the_one_process_step_with_an_empty_slice(tmp_path):
    # 17 maps in batches of 16: the last global batch holds one map, so rank 1's slice of it is empty.
    data = _train_data(tmp_path, 17)
    _train(data, tmp_path / "one", 0.0, 1, 1)
    _train(data, tmp_path / "two", 0.0, 1, 2)
    (one,), (two,) = _log(tmp_path / "one"), _log(tmp_path / "two")
    for key in ("train_loss", "val_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5)
    assert two["train_accuracy"] == one["train_accuracy"]
