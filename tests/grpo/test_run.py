"""A GRPO run: its files and log, resumption, refusals, and the data-parallel arithmetic."""
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from l2s.errors import L2SError
from l2s.grpo import GRPOTrainer, epoch_prompts, run_epoch, train_grpo

from .conftest import PROMPTS, make_tiny_pipe, redness, tiny_settings
from .test_rollout import OneProcess


def _run(out, settings, **kwargs):
    return train_grpo(make_tiny_pipe(), redness, settings, out, PROMPTS, eval_prompts=PROMPTS[:1],
                      evaluators={"red": redness}, progress=False, accelerator=OneProcess(), **kwargs)


def _weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_run_writes_adapters_log_and_checkpoint_and_resumes_exactly(tmp_path, umask_022):
    settings = tiny_settings()
    whole = _run(tmp_path / "whole", settings, command="l2s shapes grpo ...")
    assert whole.epochs_done == 2
    assert [r["epoch"] for r in whole.records] == [0, 1, 2]
    first = whole.records[1]
    assert first["first_ratio"] == 1.0 and first["trained_rows"] == 2 * 6 and first["optimizer_steps"] == 2
    for key in ("reward_mean", "kl", "eval_red", "eval_reward", "sampling_s", "training_s"):
        assert key in first
    assert 0 < first["cpu_s"] < 10 * (first["sampling_s"] + first["training_s"]) + 1   # seconds, not ms or ns
    description = json.loads((tmp_path / "whole" / "grpo.json").read_text())
    assert description["epochs_done"] == 2 and description["command"] == "l2s shapes grpo ..."
    # EMA and live adapters differ once trained; both are peft folders.
    ema, raw = _weights(tmp_path / "whole" / "adapter"), _weights(tmp_path / "whole" / "adapter_raw")
    assert set(ema) == set(raw) and any(not torch.equal(ema[k], raw[k]) for k in ema)
    card = (tmp_path / "whole" / "adapter" / "README.md").read_text()   # ours, not peft's empty template
    assert "EMA weights" in card and "epoch 2 of 2" in card and "l2s shapes grpo ..." in card
    assert "More Information Needed" not in card and "Live weights" in (tmp_path / "whole/adapter_raw/README.md").read_text()
    assert set(umask_022(tmp_path / "whole").values()) == {0o644}   # peft's weights too (0600 by themselves)
    from PIL import Image

    with Image.open(tmp_path / "whole" / "curves.png") as curves:   # reward, held-out, KL, clipping
        assert curves.width == 4 * 360

    _run(tmp_path / "split", settings, stop_after=1)
    resumed = _run(tmp_path / "split", settings)
    assert [r["epoch"] for r in resumed.records] == [0, 1, 2]
    for name in ("adapter", "adapter_raw"):
        a, b = _weights(tmp_path / "whole" / name), _weights(tmp_path / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    drop = {"sampling_s", "training_s", "eval_s", "cpu_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.records] == \
           [{k: v for k, v in r.items() if k not in drop} for r in whole.records]


def test_more_epochs_continue_a_finished_run_and_other_settings_are_refused(tmp_path):
    settings = tiny_settings(epochs=1)
    _run(tmp_path, settings)
    longer = _run(tmp_path, replace(settings, epochs=2))
    assert [r["epoch"] for r in longer.records] == [0, 1, 2]
    with pytest.raises(L2SError, match=r"other settings \(beta: 0.01 -> 0.5\); use another --out or --restart"):
        _run(tmp_path, replace(settings, epochs=3, beta=0.5))
    named = replace(settings, epochs=2)
    assert _run(tmp_path / "named", named, reward_name="redness").epochs_done == 2
    with pytest.raises(L2SError, match=r"trained with the reward 'redness'; this run asks for 'blueness'"):
        _run(tmp_path / "named", replace(named, epochs=3), reward_name="blueness")
    assert _run(tmp_path / "named", replace(named, epochs=3), reward_name="redness").epochs_done == 3
    fresh = _run(tmp_path, replace(settings, beta=0.5), resume=False)
    assert [r["epoch"] for r in fresh.records] == [0, 1]


def test_a_fresh_start_killed_before_its_first_epoch_never_resumes_the_old_run(tmp_path, caplog):
    settings = tiny_settings(epochs=1)
    _run(tmp_path, settings)
    caplog.clear()
    stopped = _run(tmp_path, settings, resume=False, stop_after=0)   # a kill before epoch 1 ended
    assert stopped.epochs_done == 0
    assert ("starting the GRPO run over: removed checkpoint.pt, log.jsonl, grpo.json, adapter/, adapter_raw/, "
            "curves.png") in caplog.text
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "adapter").exists()
    rerun = _run(tmp_path, settings)            # starts at epoch 1 again: nothing of the old run is left
    assert [r["epoch"] for r in rerun.records] == [0, 1]
    (tmp_path / "checkpoint.pt").unlink()       # a start-over killed after the checkpoint went, before the log
    again = _run(tmp_path, settings)
    assert [r["epoch"] for r in again.records] == [0, 1]    # the old epoch's line went with its checkpoint


def test_a_baseline_line_without_a_checkpoint_is_judged_again(tmp_path):
    def run(evaluators, **kwargs):
        return train_grpo(make_tiny_pipe(), redness, tiny_settings(epochs=1), tmp_path, PROMPTS,
                          eval_prompts=PROMPTS[:1], evaluators=evaluators, progress=False,
                          accelerator=OneProcess(), **kwargs)

    run({"red": redness}, stop_after=0)         # cut short after the baseline, before epoch 1 ended
    records = run({"other": redness}).records     # e.g. rerun on another model: nothing recorded says
    assert [r["epoch"] for r in records] == [0, 1]
    assert "eval_other" in records[0] and "eval_red" not in records[0]


def test_ctrl_c_before_the_first_epoch_is_saved_says_nothing_resumes(tmp_path, monkeypatch):
    import l2s.grpo.run

    settings = tiny_settings(epochs=2)
    monkeypatch.setattr(l2s.grpo.run, "run_epoch", _raise_keyboard_interrupt)   # after the baseline was logged
    with pytest.raises(KeyboardInterrupt) as stopped:
        _run(tmp_path, settings)
    assert (tmp_path / "log.jsonl").exists()      # the baseline, which a rerun judges again
    assert stopped.value.l2s_message.startswith("l2s: interrupted before the first GRPO epoch was saved in ")
    monkeypatch.undo()
    _run(tmp_path, settings, stop_after=1)
    monkeypatch.setattr(l2s.grpo.run, "run_epoch", _raise_keyboard_interrupt)
    with pytest.raises(KeyboardInterrupt) as stopped:   # an epoch is saved: the usual resume line
        _run(tmp_path, settings)
    assert not hasattr(stopped.value, "l2s_message")


def _raise_keyboard_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_run_interrupted_while_it_saves_an_epoch_redoes_that_epoch_and_loses_no_line(tmp_path, monkeypatch):
    import l2s.grpo.run as grpo_run

    settings = tiny_settings()
    whole = _run(tmp_path / "whole", settings)
    saved = grpo_run._save_adapter
    calls = []

    def interrupted(model, folder, card):     # Ctrl-C while epoch 2's adapters are written
        calls.append(folder.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        saved(model, folder, card)

    monkeypatch.setattr(grpo_run, "_save_adapter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "split", settings)
    monkeypatch.setattr(grpo_run, "_save_adapter", saved)
    resumed = _run(tmp_path / "split", settings)
    assert resumed.epochs_before == 1 and [r["epoch"] for r in resumed.records] == [0, 1, 2]
    drop = {"sampling_s", "training_s", "eval_s", "cpu_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.records] == \
           [{k: v for k, v in r.items() if k not in drop} for r in whole.records]
    fewer = _run(tmp_path / "split", replace(settings, epochs=1))      # asks for fewer than are done
    assert (fewer.epochs_done, fewer.epochs_before) == (2, 2)


@pytest.mark.parametrize("change, message", [
    (dict(group_size=8), "at least 12"),
    (dict(top_k=7), "top_k must be between 1 and half the group"),
    (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\), got 1.0"),
    (dict(sde_steps=9), "sde_steps"),
    (dict(steps=1), "at least 2 steps"),
    (dict(std="batch"), "advantage std"),
    (dict(lr=0.0), "lr must be positive"),
])
def test_settings_that_cannot_work_are_refused_before_any_work(tmp_path, change, message):
    with pytest.raises(L2SError, match=message):
        _run(tmp_path, tiny_settings(**change))
    assert not (tmp_path / "log.jsonl").exists()


def test_prompts_split_evenly_and_disjointly_over_processes():
    settings = tiny_settings(prompts_per_epoch=4)
    shares = [epoch_prompts(PROMPTS * 3, settings, epoch=5, rank=r, world=2) for r in range(2)]
    whole = epoch_prompts(PROMPTS * 3, settings, epoch=5, rank=0, world=1)
    assert shares[0] + shares[1] == whole and len(shares[0]) == 2
    with pytest.raises(L2SError, match="divide evenly"):
        tiny_settings(prompts_per_epoch=3).check(world_size=2)


class TwinProcesses(OneProcess):
    """Rank 0 of two processes whose twin sees exactly what it sees: sums double, gathers repeat."""

    num_processes = 2

    def reduce(self, tensor, reduction="sum"):
        return tensor * 2 if reduction == "sum" else tensor

    def gather(self, tensor):
        return torch.cat([tensor, tensor])


def test_the_data_parallel_path_averages_over_processes_like_one_process():
    # Two processes with one prompt each (the twin's gradient equal to ours) must step exactly as one
    # process with that one prompt: the per-process loss is scaled by the all-process row count and
    # the gradients are summed over processes before clipping and the optimiser step.
    states = []
    for accelerator, per_epoch in ((TwinProcesses(), 2), (OneProcess(), 1)):
        trainer = GRPOTrainer(make_tiny_pipe(), redness, tiny_settings(prompts_per_epoch=per_epoch), accelerator)
        record = run_epoch(trainer, PROMPTS, epoch=1, progress=False)
        states.append((trainer.state()["adapter"], record))
    (twin, twin_record), (single, single_record) = states
    assert all(torch.equal(twin[k], single[k]) for k in twin)
    assert twin_record["trained_rows"] == 2 * single_record["trained_rows"]
    assert twin_record["reward_mean"] == pytest.approx(single_record["reward_mean"])


def test_the_dev_prompts_are_judged_every_nth_epoch_and_the_last(tmp_path):
    run = _run(tmp_path / "run", tiny_settings(epochs=3), eval_every=2)
    assert [("eval_red" in r) for r in run.records] == [True, False, True, True]   # epochs 0, 1, 2, 3
    with pytest.raises(L2SError, match="eval_every must be a positive integer, got 0"):
        _run(tmp_path / "other", tiny_settings(), eval_every=0)
    with pytest.raises(L2SError, match="evaluator name 'reward' is taken by the log's eval_reward column"):
        train_grpo(make_tiny_pipe(), redness, tiny_settings(), tmp_path / "third", PROMPTS, eval_prompts=PROMPTS[:1],
                   evaluators={"reward": redness}, progress=False, accelerator=OneProcess())
    assert not (tmp_path / "third").exists()


def test_keep_evaluated_keeps_the_adapter_of_every_judged_epoch(tmp_path):
    run = _run(tmp_path / "run", tiny_settings(epochs=3), eval_every=2, keep_evaluated=True)
    kept = sorted(p.name for p in (tmp_path / "run" / "evaluated").iterdir())
    assert kept == ["epoch-0002", "epoch-0003"] and run.epochs_done == 3   # judged: 2 and the last
    last, latest = _weights(tmp_path / "run" / "evaluated" / "epoch-0003"), _weights(tmp_path / "run" / "adapter")
    assert all(torch.equal(last[k], latest[k]) for k in latest)
    second = _weights(tmp_path / "run" / "evaluated" / "epoch-0002")
    assert any(not torch.equal(second[k], latest[k]) for k in latest)
    assert "after epoch 2 of 3" in (tmp_path / "run" / "evaluated" / "epoch-0002" / "README.md").read_text()
    assert not (_run(tmp_path / "plain", tiny_settings()).out / "evaluated").exists()     # only when asked
    _run(tmp_path / "run", tiny_settings(epochs=3), resume=False)           # a fresh start removes them
    assert not (tmp_path / "run" / "evaluated").exists()


def test_the_shapes_run_trains_and_judges_the_prompts_it_is_given(tmp_path):
    from l2s.shapes.tuning import train_shapes_grpo

    seen = []

    def reward(images, prompts):
        seen.extend(prompts)
        return redness(images, prompts)

    train, dev = ["a red circle to the left of a blue square"], ["a green triangle above a yellow square"]
    run = train_shapes_grpo(tmp_path / "run", reward, pipe=make_tiny_pipe(),
                            settings=tiny_settings(epochs=1, prompts_per_epoch=1), prompts=(train, dev),
                            progress=False, accelerator=OneProcess())
    settings = tiny_settings()
    assert seen == dev * len(settings.eval_seeds) + train * settings.group_size + dev * len(settings.eval_seeds)
    assert run.records[0]["eval_images"] == len(settings.eval_seeds)
    from l2s.errors import UsageError

    with pytest.raises(UsageError, match=r"either settings or setting overrides \(lr\), not both"):
        train_shapes_grpo(tmp_path / "other", reward, pipe=make_tiny_pipe(), settings=settings, lr=1e-2)
    with pytest.raises(UsageError, match="either pipe or pipeline_dir"):
        train_shapes_grpo(tmp_path / "other", reward, pipe=make_tiny_pipe(), pipeline_dir=tmp_path)


@pytest.mark.parametrize("reward, message", [
    (lambda images, prompts: torch.zeros(len(images) - 1), r"returned 11 values for 12 images: it must return one"),
    (lambda images, prompts: torch.full((len(images),), float("nan")), r"returned 12 non-finite value\(s\)"),
])
def test_a_reward_that_does_not_give_one_finite_value_per_image_is_refused(tmp_path, reward, message):
    # a NaN reward once trained the adapter into NaNs and saved them; a short one failed in a reshape
    trainer = GRPOTrainer(make_tiny_pipe(), reward, tiny_settings(prompts_per_epoch=1), OneProcess())
    with pytest.raises(L2SError, match=message):
        run_epoch(trainer, PROMPTS, epoch=1, progress=False)


def test_a_run_resumed_on_another_base_model_is_refused(tmp_path):
    # the adapter and its log would have trained on two models, and the bench would cost the wrong run
    settings = tiny_settings(epochs=1)
    _run(tmp_path, settings, base_model="weights aaaa")
    assert json.loads((tmp_path / "grpo.json").read_text())["base_model"] == "weights aaaa"
    with pytest.raises(L2SError, match=r"another base model \(weights aaaa; this run's is weights bbbb\)"):
        _run(tmp_path, replace(settings, epochs=2), base_model="weights bbbb")
    assert _run(tmp_path, replace(settings, epochs=2), base_model="weights aaaa").epochs_done == 2
    assert _run(tmp_path, replace(settings, epochs=3)).epochs_done == 3     # a call that names none: unchecked


def test_the_dev_bar_names_its_image_count_and_counts_steps(capsys):
    # it read "dev images: 36/36" for 64 images: its total is sampler steps of chunks
    from l2s.grpo import evaluate

    trainer = GRPOTrainer(make_tiny_pipe(), redness, tiny_settings(eval_seeds=(0, 1)), OneProcess())
    evaluate(trainer, PROMPTS[:3], {"red": redness}, redness, progress=True, label="dev (epoch 1)")
    err = capsys.readouterr().err
    # 6 images in one chunk of 8: 4 steps
    assert "dev (epoch 1): sampling 6 images" in err and "/4 [" in err and "step/s" in err
    assert "dev (epoch 1) images" not in err


def test_a_run_resumed_on_another_number_of_processes_says_it_is_no_longer_a_repeat(tmp_path, caplog):
    _run(tmp_path, tiny_settings(epochs=1))
    record = json.loads((tmp_path / "grpo.json").read_text())
    (tmp_path / "grpo.json").write_text(json.dumps({**record, "processes": 2}))   # as if made on two
    caplog.clear()
    resumed = _run(tmp_path, tiny_settings(epochs=2))
    assert [r["epoch"] for r in resumed.records] == [0, 1, 2]                        # allowed: a run may grow
    assert "was trained on 2 process(es) and resumes on 1: its later epochs draw other prompts" in caplog.text
    caplog.clear()
    _run(tmp_path, tiny_settings(epochs=3))                                          # now recorded as one
    assert "resumes on" not in caplog.text


class Scripted:
    """A judge or reward whose every image gets ``values[call]`` at its ``call``-th use (the last
    value from then on), plus ``spread`` x redness (a reward's groups need a spread to train on)."""

    def __init__(self, *values: float, spread: float = 0.0) -> None:
        self.values, self.spread, self.calls = values, spread, 0

    def __call__(self, images, prompts):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return value + self.spread * redness(images, prompts)


def test_a_judge_that_falls_while_the_reward_rises_is_warned_once(tmp_path, caplog):
    """The reward is used once per epoch to train and once per judging; the judge once per judging."""
    reward = Scripted(0.0, 0.0, 5.0, spread=1e-3)   # the epoch-0 judging, epoch 1's training, then higher
    judge = Scripted(0.9, 0.9, 0.1, 0.1)     # judged at epochs 0 and 1 as at the start, then fallen
    with caplog.at_level("WARNING", logger="l2s.grpo.run"):
        train_grpo(make_tiny_pipe(), reward, tiny_settings(epochs=3), tmp_path / "run", PROMPTS,
                   eval_prompts=PROMPTS[:1], evaluators={"found": judge}, progress=False, accelerator=OneProcess())
    warnings = [r.getMessage() for r in caplog.records if "may be hacked" in r.getMessage()]
    assert len(warnings) == 1, warnings                  # epoch 2 warns; epoch 3 (fallen still) does not again
    assert warnings[0].startswith("warning: epoch 2: the held-out reward rose")
    assert "found 0.900 -> 0.100" in warnings[0]


def test_a_judge_that_falls_with_the_reward_is_not_called_hacking(tmp_path, caplog):
    reward, judge = Scripted(5.0, 5.0, 0.0, spread=1e-3), Scripted(0.9, 0.1)
    with caplog.at_level("WARNING", logger="l2s.grpo.run"):
        train_grpo(make_tiny_pipe(), reward, tiny_settings(epochs=2), tmp_path / "run", PROMPTS,
                   eval_prompts=PROMPTS[:1], evaluators={"found": judge}, progress=False, accelerator=OneProcess())
    assert not [r for r in caplog.records if "may be hacked" in r.getMessage()]
