"""Preference pairs of the shapes world: flips, the exact check, splits by prompt, resuming; the rule reward."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import l2s.shapes.reward_data as reward_data
from l2s.errors import L2SError
from l2s.relations import PROMPT_PHRASE
from l2s.reward import load_pairs
from l2s.reward.pairs import done_shards, shard_paths
from l2s.shapes import TINY_CONFIG, build_shapes_pipeline
from l2s.shapes.batch_sampling import sample_images
from l2s.shapes.reward_data import PairSettings, make_reward_pairs, match_family, split_of
from l2s.shapes.reward_prompts import OPPOSITE, PAIR_PATTERNS, Chain, pair_palette, parse_chain, random_chain
from l2s.shapes.rule_reward import RuleReward, to_pil
from l2s.shapes.detector import ShapesDetector
from l2s.shapes.scenes import COLOURS, SHAPES, Scene, SceneObject, render_array
from l2s.shapes.verdicts import extra_objects

# ---- prompts and flips ----------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PAIR_PATTERNS)
def test_a_flip_reverses_the_chosen_relations_and_keeps_everything_else(pattern):
    rng = np.random.default_rng(3)
    chain = random_chain(rng, *pattern, *pair_palette())
    for flips in ([0], list(range(len(chain.relations)))):
        flipped = chain.flipped(flips)
        assert flipped.names == chain.names and flipped.chains == chain.chains
        for i, (old, new) in enumerate(zip(chain.relations, flipped.relations)):
            assert new == (OPPOSITE[old] if i in flips else old)
        # The words differ only where a relation phrase was replaced by its opposite.
        a, b = chain.prompt, flipped.prompt
        for i in flips:
            a = a.replace(PROMPT_PHRASE[chain.relations[i]], "REL", 1)
            b = b.replace(PROMPT_PHRASE[flipped.relations[i]], "REL", 1)
        assert a == b
        assert parse_chain(flipped.prompt) == flipped and parse_chain(chain.prompt) == chain


@pytest.mark.parametrize("chain, index, expected", [
    (("red circle", "blue square"), 0, "a blue square"),
    (("red circle", "blue square"), 1, "a red circle"),
    (("red circle", "blue square", "green triangle"), 0, "a blue square above a green triangle"),
    (("red circle", "blue square", "green triangle"), 1, "a red circle to the left of a green triangle"),
    (("red circle", "blue square", "green triangle"), 2, "a red circle to the left of a blue square"),
])
def test_without_leaves_one_object_out_and_keeps_the_other_relations(chain, index, expected):
    relations = ("left of", "above")[:len(chain) - 1]
    assert Chain(chain, (len(chain),), relations).without(index).prompt == expected
    two_runs = Chain(("red circle", "blue square", "green triangle", "yellow star"), (2, 2), ("left of", "below"))
    assert two_runs.without(2) == Chain(("red circle", "blue square", "yellow star"), (2, 1), ("left of",))
    assert two_runs.without(2).prompt == "a red circle to the left of a blue square and a yellow star"
    with pytest.raises(L2SError, match="out of range"):
        two_runs.without(4)


def test_parse_chain_refuses_what_is_not_a_shapes_prompt():
    for prompt in ("a dog to the left of a cat", "a red circle", "a red circle to the left of a blue"):
        with pytest.raises(L2SError):
            parse_chain(prompt)
    assert parse_chain("A photo of a red circle above a blue square.").relations == ("above",)


def test_split_is_by_object_set_whatever_the_order_and_relations():
    chain = Chain(("red circle", "blue square"), (2,), ("left of",))
    same = Chain(("blue square", "red circle"), (2,), ("above",))
    assert split_of(chain, 0.5) == split_of(same, 0.5)
    names = [f"{c} circle" for c in COLOURS]
    splits = {split_of(Chain((a, b), (2,), ("left of",)), 0.5) for a in names for b in names if a != b}
    assert splits == {"train", "heldout"}


def test_match_family_pairs_an_image_showing_p_with_one_showing_a_flip_of_it():
    chain = Chain(("red circle", "blue square", "green triangle"), (3,), ("left of", "above"))
    shown = [[{"left of"}, {"above"}], [{"right of"}, {"below"}], [{"right of", "above"}, {"above"}], None,
             [{"left of"}, {"below"}]]
    for uses in (1, 2):
        matches = match_family(np.random.default_rng(0), chain, shown, uses)
        winners, losers = [m[0] for m in matches], [m[1] for m in matches]
        assert matches and 3 not in winners + losers
        assert max(winners.count(i) for i in winners) <= uses and max(losers.count(i) for i in losers) <= uses
        assert len({frozenset(m[:2]) for m in matches}) == len(matches)          # no image pair twice
        assert len({(m[0], m[2]) for m in matches}) == len(matches)              # a winner's prompts differ
        for w, l, relations, flips in matches:
            target = chain.with_relations(relations).flipped(flips).relations
            assert all(r in s for r, s in zip(relations, shown[w])) and all(r in s for r, s in zip(target, shown[l]))
    assert len(match_family(np.random.default_rng(0), chain, shown, 2)) > len(match_family(np.random.default_rng(0), chain, shown, 1))


# ---- making pairs (rendered stand-in for the sampler) ---------------------------------------


_OBJECT = re.compile(rf"\ban? ((?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)}))\b")


def _rendered(pipe, prompts, seeds, **_):
    """Scenes of each prompt's objects at seeded random places: a sampler whose pictures follow no
    relation words, like the shapes model's."""
    out = []
    for prompt, seed in zip(prompts, seeds):
        rng = np.random.default_rng(seed)
        cells = rng.permutation(9)
        objects = []
        for name, cell in zip(_OBJECT.findall(prompt), cells):
            colour, shape = name.split()
            x, y = 2 + 10 * (cell % 3), 2 + 10 * (cell // 3)
            objects.append(SceneObject(shape, colour, (x, y, x + 8, y + 8)))
        out.append(render_array(Scene(32, objects)))
    return np.stack(out)


class _Pipe:
    def set_progress_bar_config(self, **_):
        pass


@pytest.fixture
def rendered_sampler(monkeypatch):
    monkeypatch.setattr(reward_data, "sample_images", _rendered)


SMALL = PairSettings(families_per_shard=4, images_per_family=8, heldout_fraction=0.3)


def test_every_pair_passes_the_exact_check_and_flips_only_relations(tmp_path, rendered_sampler):
    counts = make_reward_pairs(tmp_path, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=3, progress=False)
    pairs = load_pairs(tmp_path)
    assert len(pairs) == counts["train"] + counts.get("heldout", 0) > 0
    assert {r["flips"] for r in pairs.records} >= {1, 2}
    rule = RuleReward()
    winners = to_pil(pairs.images[pairs.winner].permute(0, 3, 1, 2).float() / 255)
    losers = to_pil(pairs.images[pairs.loser].permute(0, 3, 1, 2).float() / 255)
    assert rule(winners, pairs.prompts).tolist() == [1.0] * len(pairs)
    assert rule(losers, pairs.prompts).tolist() == [0.0] * len(pairs)
    assert rule(losers, [r["perturbed"] for r in pairs.records]).tolist() == [1.0] * len(pairs)
    for r in pairs.records:
        good, bad = parse_chain(r["prompt"]), parse_chain(r["perturbed"])
        assert good.flipped(r["flipped"]) == bad and len(r["flipped"]) == r["flips"]
    # Held out by prompt: no set of objects has pairs on both sides.
    sides = {}
    for r in pairs.records:
        sides.setdefault(frozenset(parse_chain(r["prompt"]).names), set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values()) and {r["split"] for r in pairs.records} == {"train", "heldout"}


def test_a_dropped_object_loser_lacks_exactly_that_object_and_shares_the_winners_seed(tmp_path, rendered_sampler):
    counts = make_reward_pairs(tmp_path, 10 ** 6, settings=replace(SMALL, drop_fraction=1.0), pipe=_Pipe(),
                               max_shards=2, progress=False)
    pairs = load_pairs(tmp_path)
    drops = pairs.where(kind="drop")
    winners = {int(w) for w in pairs.where(kind=None).winner}
    assert len(drops) > 0 and counts.get("train/drop", 0) + counts.get("heldout/drop", 0) == len(drops)
    assert {int(w) for w in drops.winner} <= winners and len(set(drops.winner.tolist())) == len(drops)
    rule, detector = RuleReward(), ShapesDetector()
    to_images = lambda index: to_pil(pairs.images[index].permute(0, 3, 1, 2).float() / 255)   # noqa: E731
    assert rule(to_images(drops.winner), drops.prompts).tolist() == [1.0] * len(drops)
    assert rule(to_images(drops.loser), drops.prompts).tolist() == [0.0] * len(drops)
    for record, image in zip(drops.records, to_images(drops.loser)):
        names = parse_chain(record["prompt"]).names
        found = detector.detect(image, list(names))
        assert [n for n in names if found[n] is None] == [record["dropped"]]
        assert record["loser_seed"] == record["winner_seed"] and record["dropped"] not in record["perturbed"]
    assert len(pairs.mirrorable()) == len(pairs) - len(drops)


def test_a_duplicated_object_loser_is_its_winner_with_one_object_twice(tmp_path, rendered_sampler):
    settings = replace(SMALL, drop_fraction=0.5, duplicate_fraction=1.0)
    counts = make_reward_pairs(tmp_path, 10 ** 6, settings=settings, pipe=_Pipe(), max_shards=2, progress=False)
    pairs = load_pairs(tmp_path)
    duplicates, flips = pairs.where(kind="duplicate"), pairs.where(kind=None)
    assert len(duplicates) > 0 and len(pairs.where(kind="drop")) > 0
    assert counts.get("train/duplicate", 0) + counts.get("heldout/duplicate", 0) == len(duplicates)
    assert {int(w) for w in duplicates.winner} <= {int(w) for w in flips.winner}
    assert len(set(duplicates.winner.tolist())) == len(duplicates)
    detector = ShapesDetector()
    for record, w, l in zip(duplicates.records, duplicates.winner, duplicates.loser):
        winner, loser = (pairs.images[int(i)].numpy() for i in (w, l))
        changed = np.argwhere((winner != loser).any(axis=-1))
        assert len(changed) > 0 and record["duplicated"] in parse_chain(record["prompt"]).names
        # only background was painted: every changed pixel was background in the winner
        assert (detector.classify_pixels(winner)[tuple(changed.T)] == 0).all()
        label = record["duplicated"]
        assert detector.count(loser, label) == detector.count(winner, label) + 1
        assert record["loser_seed"] == record["winner_seed"]
    assert len(pairs.mirrorable()) == len(flips)
    assert "duplicate_fraction" not in SMALL.manifest()
    with pytest.raises(L2SError, match="duplicate_fraction must be in"):
        replace(SMALL, duplicate_fraction=-0.1).check()


def _rendered_with_copies(pipe, prompts, seeds, **_):
    """:func:`_rendered`, with a second copy of the first object in every third seed's picture."""
    images = _rendered(pipe, prompts, seeds)
    for image, seed in zip(images, seeds):
        if seed % 3 == 0:
            classes = ShapesDetector().classify_pixels(image)
            cells = [(slice(2 + 10 * (c // 3), 10 + 10 * (c // 3)), slice(2 + 10 * (c % 3), 10 + 10 * (c % 3)))
                     for c in range(9)]
            free = next(cell for cell in cells if not classes[cell].any())
            image[free] = image[next(cell for cell in cells if classes[cell].any())]
    return images


def test_single_winners_keeps_out_winners_that_show_an_object_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(reward_data, "sample_images", _rendered_with_copies)
    detector = ShapesDetector()

    def winners_with_copies(folder, settings):
        make_reward_pairs(folder, 10 ** 6, settings=settings, pipe=_Pipe(), max_shards=2, progress=False)
        pairs = load_pairs(folder)
        images = [Image.fromarray(pairs.images[int(w)].numpy()) for w in pairs.winner]
        return len(pairs), sum(extra_objects(detector, image, parse_chain(prompt).spec())
                               for image, prompt in zip(images, pairs.prompts))

    assert winners_with_copies(tmp_path / "any", SMALL)[1] > 0          # GenEval's rule passes a second copy
    kept, copies = winners_with_copies(tmp_path / "single", replace(SMALL, single_winners=True))
    assert kept > 0 and copies == 0
    assert "single_winners" not in SMALL.manifest() and replace(SMALL, single_winners=True).manifest()["single_winners"]


def test_paint_duplicate_copies_the_object_to_free_background_or_gives_up():
    from l2s.shapes.duplicates import paint_duplicate

    detector, rng = ShapesDetector(), np.random.default_rng(0)
    image = render_array(Scene(64, [SceneObject("circle", "red", (8, 8, 20, 20)),
                                    SceneObject("square", "blue", (40, 40, 52, 52))]))
    painted = paint_duplicate(image, "red circle", ["blue square"], detector, rng)
    assert [detector.count(painted, label) for label in ("red circle", "red", "circle", "blue square")] == [2, 2, 2, 1]
    assert [detector.count(image, label) for label in ("red circle", "square", "green")] == [1, 1, 0]
    boxes = [detector.detect(Image.fromarray(a), ["blue square"])["blue square"].box for a in (image, painted)]
    assert boxes[0] == boxes[1]
    assert paint_duplicate(image, "green triangle", ["blue square"], detector, rng) is None  # not in the image
    crowded = render_array(Scene(64, [SceneObject("circle", "red", (2, 2, 62, 62))]))
    assert paint_duplicate(crowded, "red circle", [], detector, rng) is None               # nowhere free


def test_paint_duplicate_copies_only_its_object_not_a_same_colour_neighbour_in_its_box():
    from l2s.shapes.duplicates import paint_duplicate

    # the red square's corner lies inside the diamond's box without touching the diamond
    detector = ShapesDetector()
    image = render_array(Scene(96, [SceneObject("diamond", "red", (4, 4, 28, 28)),
                                    SceneObject("square", "red", (24, 24, 36, 36))]))
    for seed in range(4):
        painted = paint_duplicate(image, "red diamond", ["red square"], detector, np.random.default_rng(seed))
        assert [detector.count(painted, label) for label in ("red diamond", "red square", "red")] == [2, 1, 3]


def test_paint_duplicate_leaves_an_object_the_border_may_cut_alone():
    from l2s.shapes.duplicates import paint_duplicate

    # still a red circle to the detector, but a copy inside the image would show the straight cut
    detector = ShapesDetector()
    for box in ((-2, 20, 14, 36), (20, 50, 36, 66)):
        image = render_array(Scene(64, [SceneObject("circle", "red", box),
                                        SceneObject("square", "blue", (40, 8, 52, 20))]))
        assert detector.count(image, "red circle") == 1
        assert paint_duplicate(image, "red circle", ["blue square"], detector, np.random.default_rng(0)) is None
    inside = render_array(Scene(64, [SceneObject("circle", "red", (1, 20, 17, 36))]))
    assert paint_duplicate(inside, "red circle", [], detector, np.random.default_rng(0)) is not None


def test_paint_duplicate_copies_the_blended_edge_around_its_object():
    from PIL import Image, ImageFilter

    from l2s.shapes.duplicates import paint_duplicate

    # generated objects have soft edges; a copy without the ring around the box would be sharper
    detector = ShapesDetector()
    scene = Scene(64, [SceneObject("square", "red", (8, 8, 20, 20)), SceneObject("circle", "blue", (8, 40, 20, 52))])
    image = np.asarray(Image.fromarray(render_array(scene)).filter(ImageFilter.BoxBlur(1)))
    painted = paint_duplicate(image, "red square", ["blue circle"], detector, np.random.default_rng(0))
    (top, left), (bottom, right) = (lambda c: (c.min(0), c.max(0) + 1))(np.argwhere((painted != image).any(-1)))
    assert (bottom - top, right - left) == (14, 14)   # the 12-pixel box and a pixel of edge each side
    assert (painted[top:bottom, left:right] == image[7:21, 7:21]).all()


def test_a_folder_made_before_drop_pairs_existed_still_resumes(tmp_path, rendered_sampler):
    assert "drop_fraction" not in SMALL.manifest() and replace(SMALL, drop_fraction=0.5).manifest()["drop_fraction"]
    make_reward_pairs(tmp_path, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=1, progress=False)
    with pytest.raises(L2SError, match="drop_fraction"):
        make_reward_pairs(tmp_path, 10 ** 6, settings=replace(SMALL, drop_fraction=0.5), pipe=_Pipe(), max_shards=2,
                          progress=False)
    with pytest.raises(L2SError, match="drop_fraction must be in"):
        replace(SMALL, drop_fraction=1.5).check()


def test_a_folder_made_before_duplicate_pairs_resumes_and_a_refusal_names_its_old_value(tmp_path, rendered_sampler):
    make_reward_pairs(tmp_path, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=1, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert not {"duplicate_fraction", "single_winners"} & set(manifest["settings"])   # as made before the options
    make_reward_pairs(tmp_path, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=2, progress=False)
    assert done_shards(tmp_path) == [0, 1]
    # the folder was made with 0.0, not with "(absent)"
    with pytest.raises(L2SError, match=r"\(duplicate_fraction: 0\.0 -> 0\.5\)"):
        make_reward_pairs(tmp_path, 10 ** 6, settings=replace(SMALL, duplicate_fraction=0.5), pipe=_Pipe(),
                          max_shards=3, progress=False)
    with pytest.raises(L2SError, match=r"\(single_winners: False -> True\)"):
        make_reward_pairs(tmp_path, 10 ** 6, settings=replace(SMALL, single_winners=True), pipe=_Pipe(),
                          max_shards=3, progress=False)


def test_an_interrupted_run_resumes_to_the_same_pairs(tmp_path, rendered_sampler):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    make_reward_pairs(whole, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=3, progress=False)
    make_reward_pairs(parts, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=2, progress=False)
    # A kill while shard 2 was being written: its images are there, its pair lines are not.
    images, _ = shard_paths(whole, 2)
    shard_paths(parts, 2)[0].write_bytes(images.read_bytes()[:100])
    make_reward_pairs(parts, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=3, progress=False)
    a, b = load_pairs(whole), load_pairs(parts)
    assert a.records == b.records and torch.equal(a.images, b.images)
    with pytest.raises(L2SError, match="other settings"):
        make_reward_pairs(parts, 10 ** 6, settings=replace(SMALL, seed=1), pipe=_Pipe(), max_shards=4, progress=False)


def test_restart_replaces_a_folder_of_other_settings_and_keeps_other_files(tmp_path, rendered_sampler):
    make_reward_pairs(tmp_path, 10 ** 6, settings=SMALL, pipe=_Pipe(), max_shards=2, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    other = replace(SMALL, seed=1)
    make_reward_pairs(tmp_path, 10 ** 6, settings=other, pipe=_Pipe(), max_shards=1, progress=False, restart=True)
    fresh = tmp_path / "fresh"
    make_reward_pairs(fresh, 10 ** 6, settings=other, pipe=_Pipe(), max_shards=1, progress=False)
    assert done_shards(tmp_path) == [0] and (tmp_path / "notes.txt").read_text() == "mine"
    assert load_pairs(tmp_path).records == load_pairs(fresh).records


def test_the_run_stops_once_it_has_the_training_pairs_asked_for(tmp_path, rendered_sampler):
    counts = make_reward_pairs(tmp_path, 5, settings=SMALL, pipe=_Pipe(), progress=False)
    assert counts["train"] >= 5
    assert make_reward_pairs(tmp_path, 5, settings=SMALL, pipe=_Pipe(), progress=False) == counts


# ---- the batched sampler and the rule reward ------------------------------------------------


def test_batched_sampling_reproduces_one_image_calls():
    pipe = build_shapes_pipeline(replace(TINY_CONFIG, image_size=16), seed=0)
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a red circle to the left of a blue square", "a green triangle above a yellow square"], [5, 9]
    batch = sample_images(pipe, prompts, seeds, steps=3, true_cfg_scale=2.0)
    for prompt, seed, image in zip(prompts, seeds, batch):
        single = pipe(prompt, negative_prompt="", true_cfg_scale=2.0, num_inference_steps=3, height=16, width=16,
                      generator=torch.Generator().manual_seed(seed)).images[0]
        assert np.array_equal(np.asarray(single), image)


def test_rule_reward_reads_any_shapes_prompt_and_takes_tensors():
    scene = Scene(32, [SceneObject("circle", "red", (2, 12, 10, 20)), SceneObject("square", "blue", (14, 12, 22, 20)),
                       SceneObject("triangle", "green", (14, 24, 22, 31))])
    image = torch.from_numpy(np.array(render_array(scene))).permute(2, 0, 1)[None].float() / 255
    rule = RuleReward()
    prompts = ["a red circle to the left of a blue square", "a red circle to the right of a blue square",
               "a red circle to the left of a blue square above a green triangle",
               "a red circle to the left of a blue square and a green triangle below a red circle"]
    assert rule(image.expand(4, -1, -1, -1), prompts).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert RuleReward("found")(image, ["a red circle to the right of a blue square"]).tolist() == [1.0]
    with pytest.raises(L2SError):
        rule(image, ["a red circle left of a dog"])
    # a second red circle: GenEval's rule still passes it, "single" does not
    doubled = Scene(32, [*scene.objects, SceneObject("circle", "red", (24, 2, 31, 9))])
    image = torch.from_numpy(np.array(render_array(doubled))).permute(2, 0, 1)[None].float() / 255
    assert [RuleReward(v)(image, prompts[:1]).item() for v in ("strict", "single")] == [1.0, 0.0]
    assert RuleReward("single")(image.new_tensor(render_array(scene)).permute(2, 0, 1)[None] / 255,
                                prompts[:1]).item() == 1.0


def test_cli_says_when_max_shards_stopped_it_short_of_pairs(tmp_path, rendered_sampler, monkeypatch, capsys):
    import l2s.shapes
    from l2s.cli import main

    monkeypatch.setattr(l2s.shapes, "load_shapes_pipeline", lambda *_, **__: _Pipe())
    argv = ["shapes", "reward-data", "--out", str(tmp_path / "p"), "--pairs", "100000", "--families-per-shard", "4",
            "--images-per-family", "8", "--max-shards", "1", "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("l2s: ") and "training pairs" in captured.err
    assert "l2s: stopped by --max-shards 1 before --pairs 100000: rerun with a larger --max-shards" in captured.err
    assert main(argv[:5] + ["1"] + argv[6:]) == 0   # enough pairs already: no such line
    err = capsys.readouterr().err
    assert "stopped by" not in err
    held_out = "l2s: warning: no held-out pairs" in err      # said exactly when the folder holds none
    assert held_out == (" 0 held out" in captured.err), (captured.err, err)
