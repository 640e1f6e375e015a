"""Preference pairs for a spatial reward model, made by the shapes model and judged exactly.

The recipe follows the preference data of spatial reward models (prompts of several objects and
relations; a perturbed copy of each prompt with 1, or 2-3, relations flipped and nothing else;
both rendered by a generator; each pair checked). A pair is ``(prompt P, winner, loser)``:

* **winner**: a shapes-model image that satisfies P (GenEval rule, strict: every object found
  with its colour and shape and every relation of P holding);
* **loser**: a shapes-model image of the same objects that satisfies P' = P with k relations
  flipped (left <-> right, above <-> below), and so violates P in exactly those k relations;
  the check confirms that it fails P.

Both are judged against P, the prompt the pair carries (``prompt``); ``perturbed`` is P'. The
exact detector plays the human check on both images.

Where the images come from. The shapes model draws the objects a prompt names but not where
the relation words put them: the same seed under P and P' gives nearly the same picture, so
pairs of one seed almost never pass the check. Images are therefore pooled per *family*: one set
of objects in one chain pattern, ``images_per_family`` seeds, each generated (unsteered, with the
recipe's sampler) from the family's prompt with relations drawn at random. The detector reads
which relations each picture shows; pairs match a picture showing P with another showing P'. Each
image is a winner in at most ``uses_per_image`` pairs (for another prompt each time) and a loser
in at most as many, and no two images are paired twice; every record keeps both seeds and the
prompts the images were generated from.

Dropped-object pairs (``drop_fraction``): a share of the winner images also gets a loser of its
own seed, generated from its source prompt without one object and kept when the detector misses
exactly that object (``kind: "drop"``, the prompt of the winner's first flip pair). Such a winner
is in one pair more than ``uses_per_image``; these losers' images follow the families' in the shard.
Duplicated-object pairs (``duplicate_fraction``) do the same with a loser that is the winner with
one of its objects painted once more at a free place (``kind: "duplicate"``; its image follows the
dropped-object losers', and its winner is in one pair more again): the GenEval rule passes it, a
prompt naming one red circle does not. With ``single_winners`` a winner must also show no object
more than once (the check a human would make and GenEval's rule does not).

Splits are by prompt: a family's pairs go to the held-out split when a hash of its unordered
object set falls under ``heldout_fraction``, so a held-out prompt, or any prompt naming the same
objects, never occurs in training. Flip counts are drawn 1 or 2-3 with equal odds when the chain
has more than one relation. Shards of ``families_per_shard`` families are committed atomically
(:mod:`l2s.reward.pairs`), every shard's draws seeded by (seed, shard), so a rerun resumes after
the last whole shard and makes the same pairs.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from l2s.errors import L2SError
from l2s.evaluation import geneval_relations
from l2s.files import output_lock
from l2s.reward.pairs import (check_manifest, clear_pairs, done_shards, load_pairs, pair_group, write_progress,
                              write_shard)
from l2s.relations import DIRECTIONAL

from .batch_sampling import sample_images
from .detector import ShapesDetector
from .duplicates import paint_duplicate
from .model import load_shapes_pipeline
from .pair_settings import PairSettings
from .reward_prompts import Chain, pair_palette, random_chain
from .verdicts import extra_objects, judge


def split_of(chain: Chain, fraction: float) -> str:
    """``heldout`` for a stable ``fraction`` of object sets (order and relations ignored), else ``train``."""
    key = "|".join(sorted(chain.names)).encode()
    value = int.from_bytes(hashlib.sha1(key).digest()[:8], "big") / 2 ** 64
    return "heldout" if value < fraction else "train"


def shown_relations(detector: ShapesDetector, image: Image.Image, chain: Chain) -> list[set[str]] | None:
    """Per chained pair, the directions that hold in ``image`` (GenEval rule on the detected
    boxes); None when an object is missing."""
    found = detector.detect(image, list(dict.fromkeys(chain.names)))
    if any(d is None for d in found.values()):
        return None
    return [geneval_relations(found[a].box, found[b].box) & set(DIRECTIONAL) for a, b in chain.pairs()]


def _flip_sets(rng: np.random.Generator, n_relations: int) -> list[tuple[int, ...]]:
    """Flip index sets to try, the drawn category (1 or 2-3 flips) first, shuffled within each."""
    singles = [(i,) for i in range(n_relations)]
    multis = [c for k in range(2, n_relations + 1) for c in itertools.combinations(range(n_relations), k)]
    rng.shuffle(singles)
    rng.shuffle(multis)
    return singles + multis if not multis or rng.random() < 0.5 else multis + singles


def match_family(rng: np.random.Generator, chain: Chain, shown: Sequence[list[set[str]] | None],
                 uses: int = 1) -> list[tuple]:
    """(winner, loser, relations of P, flip indices) matches among a family's images: each image a
    winner at most ``uses`` times (for another prompt each time) and a loser at most ``uses``
    times; no two images are paired twice."""
    assignments = [set(itertools.product(*s)) if s is not None else set() for s in shown]
    as_loser, prompts_of, paired, out = [0] * len(shown), [set() for _ in shown], set(), []
    for _ in range(uses):
        for w in map(int, rng.permutation(len(shown))):
            options = sorted(assignments[w] - prompts_of[w])
            if not options:
                continue
            relations = options[int(rng.integers(len(options)))]
            for flips in _flip_sets(rng, len(relations)):
                target = chain.with_relations(relations).flipped(flips).relations
                losers = [int(l) for l in rng.permutation(len(shown)) if l != w and as_loser[l] < uses
                          and target in assignments[l] and frozenset((w, int(l))) not in paired]
                if losers:
                    as_loser[losers[0]] += 1
                    prompts_of[w].add(relations)
                    paired.add(frozenset((w, losers[0])))
                    out.append((w, losers[0], relations, flips))
                    break
    return out


def family_chain(settings: PairSettings, rng: np.random.Generator) -> Chain:
    shapes, colours = pair_palette(settings.include_held_out_vocabulary)
    keys = sorted(settings.patterns)
    weights = np.array([settings.patterns[k] for k in keys], dtype=float)
    objects, relations = map(int, keys[int(rng.choice(len(keys), p=weights / weights.sum()))].split(","))
    return random_chain(rng, objects, relations, shapes, colours)


def image_seed(settings: PairSettings, shard: int, family: int, image: int) -> int:
    return settings.seed * 10 ** 10 + shard * 10 ** 5 + family * 100 + image


def plan_shard(settings: PairSettings, shard: int) -> list[tuple[Chain, list[Chain], list[int]]]:
    """Per family of the shard: its chain, the prompt chain of each image, each image's seed."""
    rng = np.random.default_rng([settings.seed, shard])
    plan = []
    for j in range(settings.families_per_shard):
        chain = family_chain(settings, rng)
        sources = [chain.with_relations([DIRECTIONAL[int(i)] for i in rng.integers(4, size=len(chain.relations))])
                   for _ in range(settings.images_per_family)]
        plan.append((chain, sources, [image_seed(settings, shard, j, i) for i in range(settings.images_per_family)]))
    return plan


def make_shard(pipe, settings: PairSettings, shard: int, detector: ShapesDetector,
               batch_size: int = 32, progress=None) -> tuple[np.ndarray, list[dict]]:
    """Images and pair records of one shard (nothing written): flip pairs, then dropped-object
    pairs (``settings.drop_fraction``) and duplicated-object ones (``settings.duplicate_fraction``),
    whose loser images follow the families' images in that order."""
    plan = plan_shard(settings, shard)
    prompts = [source.prompt for _, sources, _ in plan for source in sources]
    seeds = [s for _, _, family_seeds in plan for s in family_seeds]
    images = sample_images(pipe, prompts, seeds, steps=settings.steps, true_cfg_scale=settings.true_cfg_scale,
                           batch_size=batch_size, progress=progress)
    rng = np.random.default_rng([settings.seed, shard, 1])
    records, n = [], settings.images_per_family
    for j, (chain, sources, family_seeds) in enumerate(plan):
        pictures = [Image.fromarray(images[j * n + i]) for i in range(n)]
        shown = [shown_relations(detector, picture, chain) for picture in pictures]
        for w, l, relations, flips in match_family(rng, chain, shown, settings.uses_per_image):
            good, bad = chain.with_relations(relations), chain.with_relations(relations).flipped(flips)
            # The exact check of the recipe: the winner satisfies P, the loser P' and not P.
            if not (judge(detector, pictures[w], good.spec()).correct
                    and judge(detector, pictures[l], bad.spec()).correct
                    and not judge(detector, pictures[l], good.spec()).correct
                    and not (settings.single_winners and extra_objects(detector, pictures[w], good.spec()))):
                continue
            records.append({"prompt": good.prompt, "perturbed": bad.prompt, "winner": j * n + w, "loser": j * n + l,
                            "flips": len(flips), "flipped": list(flips), "pattern": chain.pattern,
                            "objects": chain.objects_key, "split": split_of(chain, settings.heldout_fraction),
                            "family": f"{shard}-{j}", "winner_seed": family_seeds[w], "loser_seed": family_seeds[l],
                            "winner_generated_from": sources[w].prompt, "loser_generated_from": sources[l].prompt})
    flips = list(records)
    if settings.drop_fraction:
        images, drops = _drop_pairs(pipe, settings, plan, images, flips, detector, batch_size, progress,
                                    np.random.default_rng([settings.seed, shard, 2]))
        records += drops
    if settings.duplicate_fraction:
        images, duplicates = _duplicate_pairs(settings, plan, images, flips, detector,
                                              np.random.default_rng([settings.seed, shard, 3]))
        records += duplicates
    return images, records


def _chosen_winners(records: list[dict], fraction: float, rng: np.random.Generator) -> list[dict]:
    """Each winner's first flip pair, kept with probability ``fraction`` (one draw per winner)."""
    firsts: dict = {}
    for record in records:
        firsts.setdefault(record["winner"], record)
    return [r for r in firsts.values() if rng.random() < fraction]


def _winner_fields(record: dict) -> dict:
    """What a dropped- or duplicated-object pair takes from its winner's flip pair (its loser has
    the winner's seed and no flipped relation)."""
    return {**{key: record[key] for key in ("prompt", "winner", "pattern", "objects", "split", "family",
                                            "winner_seed", "winner_generated_from")},
            "flips": 0, "flipped": [], "loser_seed": record["winner_seed"]}


def _drop_pairs(pipe, settings: PairSettings, plan, images: np.ndarray, records: list[dict], detector, batch_size,
                progress, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """A share of the winners, each against its own seed drawn from its source prompt without one
    object: kept when that object is gone and every other one is there (so P fails only by it)."""
    n, chosen = settings.images_per_family, _chosen_winners(records, settings.drop_fraction, rng)
    if not chosen:
        return images, []
    drops = []
    for record in chosen:
        j, i = divmod(record["winner"], n)
        chain, sources, _ = plan[j]
        index = int(rng.integers(len(chain.names)))
        drops.append((record, chain, index, sources[i].without(index)))
    extra = sample_images(pipe, [d[3].prompt for d in drops], [d[0]["winner_seed"] for d in drops],
                          steps=settings.steps, true_cfg_scale=settings.true_cfg_scale, batch_size=batch_size,
                          progress=progress)
    out = []
    for k, (record, chain, index, source) in enumerate(drops):
        found = detector.detect(Image.fromarray(extra[k]), list(chain.names))
        if found[chain.names[index]] is not None or any(found[name] is None for name in source.names):
            continue
        out.append({**_winner_fields(record), "kind": "drop", "perturbed": source.prompt,
                    "dropped": chain.names[index], "loser": len(images) + k, "loser_generated_from": source.prompt})
    return np.concatenate([images, extra]), out


def _duplicate_pairs(settings: PairSettings, plan, images: np.ndarray, records: list[dict], detector,
                     rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """A share of the winners, each against itself with one (random) object painted once more at a
    free place (:func:`~.duplicates.paint_duplicate`): kept when the detector sees the extra one."""
    painted, out = [], []
    for record in _chosen_winners(records, settings.duplicate_fraction, rng):
        names = list(plan[record["winner"] // settings.images_per_family][0].names)
        name = names[int(rng.integers(len(names)))]
        image = paint_duplicate(images[record["winner"]], name, [n for n in names if n != name], detector, rng)
        if image is None:
            continue
        out.append({**_winner_fields(record), "kind": "duplicate", "perturbed": record["prompt"], "duplicated": name,
                    "loser": len(images) + len(painted), "loser_generated_from": record["winner_generated_from"]})
        painted.append(image)
    return (np.concatenate([images, np.stack(painted)]) if painted else images), out


def pair_counts(records: Sequence[dict]) -> dict:
    counts: dict = {}
    for r in records:
        for key in (r["split"], f"{r['split']}/{pair_group(r)}"):
            counts[key] = counts.get(key, 0) + 1
    return counts


def make_reward_pairs(out: str | Path, train_pairs: int, *, settings: PairSettings | None = None, pipe=None,
                      pipeline_dir: str | Path | None = None, batch_size: int = 32, max_shards: int | None = None,
                      progress: bool = True, restart: bool = False) -> dict:
    """Make shards into ``out`` until it holds ``train_pairs`` training pairs (or ``max_shards``
    shards); resumes after the last whole shard (``restart``: removes the folder's pairs first).
    Returns the pair counts per split and flips."""
    settings = settings or PairSettings()
    settings.check()
    if max_shards is not None and max_shards < 1:
        raise L2SError(f"max_shards must be at least 1, got {max_shards}")
    with output_lock(out, "pair folder", kind="reward-data"):
        if restart:
            clear_pairs(out)
        check_manifest(out, settings.manifest(), settings.unrecorded())
        counts = pair_counts(load_pairs(out).records) if done_shards(out) else {}
        if counts.get("train", 0) >= train_pairs:
            return counts
        pipe = pipe if pipe is not None else load_shapes_pipeline(pipeline_dir)
        pipe.set_progress_bar_config(disable=True)
        detector = ShapesDetector()
        shard = max(done_shards(out), default=-1) + 1
        bar = tqdm(total=train_pairs, initial=min(counts.get("train", 0), train_pairs), desc="l2s reward-data",
                   unit="pair", disable=not progress)
        quiet = logging.getLogger("diffusers.pipelines.flux.pipeline_flux")
        level = quiet.level
        quiet.setLevel(logging.ERROR)   # CLIP's 77-token notice, on every batch of long prompts
        try:
            while counts.get("train", 0) < train_pairs and (max_shards is None or shard < max_shards):
                images, records = make_shard(pipe, settings, shard, detector, batch_size)
                write_shard(out, shard, images, records)
                for key, value in pair_counts(records).items():
                    counts[key] = counts.get(key, 0) + value
                write_progress(out, counts)
                bar.update(min(counts.get("train", 0), train_pairs) - bar.n)
                bar.set_postfix({"shard": shard, "heldout": counts.get("heldout", 0)}, refresh=False)
                shard += 1
        finally:
            quiet.setLevel(level)
            bar.close()
        return counts
