"""Training logs to TensorBoard through accelerate's tracker when tensorboard is installed."""
import json

import pytest
import torch

from l2s.training import tracking, train_classifier
from tests.training.test_train import _config, _synthetic, _write


def test_scalars_flatten_a_log_row():
    row = {"epoch": 3, "val_loss": 0.5, "best": True, "val_accuracy_per_step": {"1": 0.75, "3": 0.5},
           "note": "text", "lr": 1e-3}
    assert tracking.scalars(row) == {"epoch": 3.0, "val_loss": 0.5, "best": 1.0, "val_accuracy_per_step/1": 0.75,
                                     "val_accuracy_per_step/3": 0.5, "lr": 1e-3}


def test_without_tensorboard_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    assert not tracking.log_epoch(tmp_path, {"epoch": 1, "val_loss": 0.5})
    assert not (tmp_path / tracking.TENSORBOARD_DIR).exists()


@pytest.mark.skipif(not tracking.tensorboard_available(),
                    reason="tensorboard is not installed (optional: pip install 'l2s[tensorboard]')")
def test_training_writes_each_epoch_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    g = torch.Generator().manual_seed(0)
    dataset = _write(tmp_path / "data", [_synthetic(64, g, "train"), _synthetic(32, g, "val")])
    train_classifier(dataset, tmp_path / "run", _config(), epochs=2, batch_size=32, progress=False)
    events = EventAccumulator(str(tmp_path / "run" / tracking.TENSORBOARD_DIR / tracking.RUN_NAME))
    events.Reload()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    loss = events.Scalars("val_loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([row["val_loss"] for row in log])
    assert "val_accuracy_per_step/1" in events.Tags()["scalars"]
    # Starting over removes the old curves.
    train_classifier(dataset, tmp_path / "run", _config(), epochs=1, batch_size=32, progress=False, resume=False)
    events = EventAccumulator(str(tmp_path / "run" / tracking.TENSORBOARD_DIR / tracking.RUN_NAME))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [1]


class _FakeTracker:
    """Stands in for accelerate's TensorBoardTracker: records what a run did to its writer."""
    made: list = []

    def __init__(self, run_name, folder):
        self.folder, self.steps, self.finished = folder, [], False
        _FakeTracker.made.append(self)

    def start(self):
        pass

    def log(self, values, step):
        self.steps.append(step)

    def finish(self):
        self.finished = True


def test_a_finished_run_closes_its_writer(tmp_path, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(tracking, "tensorboard_available", lambda: True)
    monkeypatch.setattr(accelerate.tracking, "TensorBoardTracker", _FakeTracker)
    monkeypatch.setattr(_FakeTracker, "made", [])
    g = torch.Generator().manual_seed(0)
    dataset = _write(tmp_path / "data", [_synthetic(64, g, "train"), _synthetic(32, g, "val")])
    train_classifier(dataset, tmp_path / "run", _config(), epochs=2, batch_size=32, progress=False)
    [writer] = _FakeTracker.made
    assert writer.steps == [1, 2] and writer.finished
    assert not tracking._trackers


def test_training_draws_its_curves_every_epoch_and_a_restart_removes_them(tmp_path, monkeypatch, caplog):
    from PIL import Image

    from l2s.evaluation.curves import CURVES_FILE, save_curves

    drawn = []
    monkeypatch.setattr("l2s.training.train.save_curves", lambda out, rows, *a: drawn.append(len(rows)) or
                        save_curves(out, rows, *a))
    g = torch.Generator().manual_seed(0)
    dataset = _write(tmp_path / "data", [_synthetic(64, g, "train"), _synthetic(32, g, "val")])
    train_classifier(dataset, tmp_path / "run", _config(), epochs=2, batch_size=32, progress=False)
    train_classifier(dataset, tmp_path / "run", _config(), epochs=3, batch_size=32, progress=False)   # resumed
    assert drawn == [1, 2, 3]     # every epoch, a resumed run's with the earlier epochs
    with Image.open(tmp_path / "run" / CURVES_FILE) as picture:
        assert picture.width == 3 * 360      # a panel each: loss, accuracy, learning rate
    from l2s.training.checkpoints import prepare_out_dir

    prepare_out_dir(tmp_path / "run", {}, resume=False)      # what --restart does first
    assert not (tmp_path / "run" / CURVES_FILE).exists()     # a start-over draws its own
    assert "starting the training over: removed last/, best/, log.jsonl, curves.png" in caplog.text
