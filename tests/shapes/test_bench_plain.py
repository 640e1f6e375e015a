"""The bench's no-relation part: prompts like the training captions, found rates and the spread of
object places across seeds, measured on rendered scenes whose places are known."""
from __future__ import annotations

import numpy as np
import pytest

from l2s.errors import UsageError
from l2s.shapes import ShapesDetector, render
from l2s.shapes.bench_plain import plain_prompts, plain_scores, run_plain_part
from l2s.shapes.scenes import Scene, SceneObject

from .test_bench import _tiny_shapes_classifier, tiny_shapes_pipe  # noqa: F401 (the fixture)


def test_plain_prompts_are_distinct_captions_without_a_relation():
    prompts = plain_prompts(20, prompt_seed=0)
    assert len({p for p, _ in prompts}) == 20 and prompts == plain_prompts(20, prompt_seed=0)
    for prompt, (a, b) in prompts:
        assert prompt == f"a {a} and a {b}" and a.split()[0] != b.split()[0]
    assert plain_prompts(5, prompt_seed=1) != plain_prompts(5, prompt_seed=0)


def test_found_rates_and_position_spread_on_scenes_with_known_places(tmp_path):
    prompts = [("a red circle and a blue square", ("red circle", "blue square"))]
    # the red circle moves 0, 16 px right across the two seeds; the blue square stays; seed 1 lacks the square
    layouts = {0: [("circle", "red", (4, 4, 16, 16)), ("square", "blue", (40, 40, 52, 52))],
               1: [("circle", "red", (20, 4, 32, 16))]}
    for seed, objects in layouts.items():
        render(Scene(64, [SceneObject(*o) for o in objects])).save(tmp_path / f"0000-{seed:05d}.png")
    scores = plain_scores(ShapesDetector(), prompts, [0, 1], tmp_path)
    assert scores["n_objects"] == 4 and scores["objects_found"] == 3 / 4 == scores["colours_found"]
    # red: centres x 10/64 and 26/64 (std 8/64), y unchanged -> mean of (0.125, 0) = 0.0625; blue: one place only
    assert scores["position_spread"] == pytest.approx(0.0625)


def test_the_part_generates_each_image_once_unsteered(tiny_shapes_pipe, tmp_path, monkeypatch):
    from l2s.shapes import steer_shapes_pipeline

    steerer = steer_shapes_pipeline(tiny_shapes_pipe, _tiny_shapes_classifier(tiny_shapes_pipe))
    calls = []
    original = type(steerer).__call__

    def spy(self, prompt, **kwargs):
        calls.append((len(prompt), kwargs["steer"], kwargs.get("progress")))   # no bar per image
        return original(self, prompt, **kwargs)

    # monkeypatch, not an assignment: undoing it must leave the class inheriting __call__ again
    # (an assigned copy would hide later patches of the base class from every other test)
    monkeypatch.setattr(type(steerer), "__call__", spy)
    prompts = plain_prompts(3)
    first = run_plain_part(steerer, ShapesDetector(), prompts, (0, 1), tmp_path, batch_size=4)
    again = run_plain_part(steerer, ShapesDetector(), prompts, (0, 1), tmp_path, batch_size=4)
    monkeypatch.undo()
    assert calls == [(4, False, False), (2, False, False)] and first == again and first["n_objects"] == 12
    from l2s.errors import L2SError

    with pytest.raises(L2SError, match=r"holds images made with other settings \(lora\)"):
        run_plain_part(steerer, ShapesDetector(), prompts, (0, 1), tmp_path, 4, {"lora": "runs/grpo"})
    assert len(list((tmp_path / "no_relation").glob("*.png"))) == 6


def test_in_a_spread_run_the_bar_names_itself_as_rank_0s_share(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from PIL import Image

    import l2s.shapes.bench_plain as bench_plain
    from l2s.distributed import World

    class RankZeroOfTwo(World):   # rank 0 of a 2-process run; rank 1's image is already there
        def broadcast(self, obj):
            return obj

        def barrier(self):
            pass

    monkeypatch.setattr(bench_plain, "world", lambda: RankZeroOfTwo(0, 2))
    (tmp_path / "no_relation").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "no_relation" / "0000-00001.png")
    def steerer(prompts, **kwargs):
        return SimpleNamespace(images=[Image.new("RGB", (32, 32)) for _ in prompts])

    run_plain_part(steerer, ShapesDetector(), plain_prompts(1), (0, 1), tmp_path, batch_size=4)
    assert "no relation (rank 0 of 2): 100%" in capsys.readouterr().err


def test_an_unknown_bench_part_is_refused_before_any_work(tmp_path):
    from l2s.shapes import run_shapes_bench

    with pytest.raises(UsageError, match=r"unknown bench part posiiton \(parts: position, .*no_relation"):
        run_shapes_bench(tmp_path / "out", parts=["posiiton"])
    assert not (tmp_path / "out").exists()


def test_reward_columns_rank_correct_images_against_wrong_ones(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from l2s.evaluation import PromptSpec
    from l2s.shapes.bench_reward import reward_columns

    def record(i, correct, red):
        Image.new("RGB", (8, 8), (red, 0, 0)).save(tmp_path / f"{i}.png")
        return SimpleNamespace(meta={"image": f"{i}.png", "prompt_index": 0}, result=SimpleNamespace(correct=correct))

    def redness(images, prompts):
        assert prompts == ["p"] * len(images)
        return [np.asarray(image)[..., 0].mean() / 255 for image in images]

    specs = [PromptSpec("p", ())]
    records = [record(0, True, 200), record(1, False, 100), record(2, True, 150), record(3, False, 50)]
    columns = reward_columns(redness, records, specs, tmp_path, batch_size=3)
    assert columns["reward_auc"] == 1.0
    assert columns["reward_mean"] == pytest.approx((200 + 100 + 150 + 50) / 4 / 255, abs=1e-6)
    records[1].result.correct, records[2].result.correct = True, False   # 200, 100 right; 150, 50 wrong
    assert reward_columns(redness, records, specs, tmp_path)["reward_auc"] == 0.75
    assert reward_columns(redness, records[:1], specs, tmp_path)["reward_auc"] is None
    records[2].result.correct = None   # no verdict: neither right nor wrong (200, 100 right; 50 wrong)
    assert reward_columns(redness, records, specs, tmp_path)["reward_auc"] == 1.0


def test_the_bench_scores_its_images_with_a_reward_model(tiny_shapes_pipe, tmp_path):
    import torch

    from l2s.reward import SpatialScore, SpatialScoreConfig, SpatialScorer
    from l2s.shapes import run_shapes_bench, shapes_t5_tokenizer, write_bench_results

    tokenizer = shapes_t5_tokenizer()
    torch.manual_seed(0)
    config = SpatialScoreConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, image_size=32,
                                d_model=16, heads=2, text_layers=1, joint_layers=1, channels=(8, 16))
    SpatialScorer(SpatialScore(config), tokenizer).save_pretrained(tmp_path / "rm")
    tiny_shapes_pipe.save_pretrained(tmp_path / "model")
    _tiny_shapes_classifier(tiny_shapes_pipe).save(tmp_path / "clf")
    results = run_shapes_bench(tmp_path / "out", pipeline_dir=tmp_path / "model", classifier=tmp_path / "clf",
                               ablation_classifier=tmp_path / "clf", parts=["position", "no_relation"],
                               position_prompts=2, seeds=(0, 1), scale=0.01, progress=False,
                               reward_model=tmp_path / "rm")
    for mode in results["parts"][0]["modes"].values():
        assert isinstance(mode["reward_mean"], float) and "reward_auc" in mode
    assert results["no_relation"]["n_prompts"] == 4 and results["settings"]["reward_model"].startswith(
        f"{(tmp_path / 'rm').resolve()} (weights ")   # the model and its weights, however the path was typed
    table = write_bench_results(results, tmp_path / "bench.md").read_text()
    assert "| reward model vs exact | mode |" in table and "| no relation (unsteered) |" in table
    shipped = run_shapes_bench(tmp_path / "out", pipeline_dir=tmp_path / "model", classifier=tmp_path / "clf",
                               ablation_classifier=tmp_path / "clf", parts=["position"], position_prompts=2,
                               seeds=(0, 1), progress=False, reward_model="spatialscore")   # same images, resumed
    assert all(mode["reward_mean"] <= 0 for mode in shipped["parts"][0]["modes"].values())   # sums of log p
