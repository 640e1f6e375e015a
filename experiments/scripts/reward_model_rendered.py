"""Can a SpatialScore design learn relations at all? Train it on rendered shapes pairs (exact shapes,
no generator noise) and print the loss and a fixed test set's pairwise accuracy every 100 steps.

Tasks: ``relation`` (two objects; the loser shows the flipped relation; trained mirrored),
``presence`` (one object; the prompt names the winner's colour), ``mix`` (half each; the test set
is relation pairs). Exploratory (experiments/notebook/reward-model.md section 7).

    python experiments/scripts/reward_model_rendered.py --design joint --grounding-layers 2 --steps 600
    python experiments/scripts/reward_model_rendered.py --design relational --steps 300
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from l2s.relations import PROMPT_PHRASE
from l2s.reward import SpatialScore, SpatialScoreConfig, SpatialScorer
from l2s.reward.losses import bradley_terry_loss
from l2s.shapes import render, shapes_t5_tokenizer
from l2s.shapes.scenes import COLOURS, SHAPES, Scene, SceneObject, scene_for_relation

FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
COLOUR_NAMES = [c for c in COLOURS if c != "cyan"]          # the training vocabulary
SHAPE_NAMES = [s for s in SHAPES if s != "diamond"]


def relation_pair(rng):
    a, b = rng.choice(len(COLOUR_NAMES), 2, replace=False)
    first = (SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))], COLOUR_NAMES[a])
    second = (SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))], COLOUR_NAMES[b])
    relation = list(FLIP)[rng.integers(4)]
    images = [np.asarray(render(scene_for_relation(rng, first, r, second, size=32))) for r in (relation, FLIP[relation])]
    prompts = [f"a {first[1]} {first[0]} {PROMPT_PHRASE[r]} a {second[1]} {second[0]}" for r in (relation, FLIP[relation])]
    return (*images, *prompts)


def presence_pair(rng):
    a, b = rng.choice(len(COLOUR_NAMES), 2, replace=False)
    shape = SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]

    def one(colour):
        x, y = (int(v) for v in rng.integers(0, 22, 2))
        return np.asarray(render(Scene(32, [SceneObject(shape, colour, (x, y, x + 10, y + 10))])))

    return one(COLOUR_NAMES[a]), one(COLOUR_NAMES[b]), f"a {COLOUR_NAMES[a]} {shape}", f"a {COLOUR_NAMES[b]} {shape}"


def batch(rng, n: int, task: str):
    make = [presence_pair if task == "presence" or (task == "mix" and i % 2) else relation_pair for i in range(n)]
    winners, losers, prompts, flipped = zip(*[f(rng) for f in make])
    tensor = lambda x: torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return tensor(winners), tensor(losers), list(prompts), list(flipped)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--design", choices=("joint", "relational"), default="relational")
    p.add_argument("--grounding-layers", type=int, default=0)
    p.add_argument("--task", choices=("relation", "presence", "mix"), default="relation")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng, tokenizer = np.random.default_rng(0), shapes_t5_tokenizer()
    torch.manual_seed(0)
    config = SpatialScoreConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, image_size=32,
                                channels=(16, 32, 64), design=args.design, grounding_layers=args.grounding_layers)
    scorer = SpatialScorer(SpatialScore(config), tokenizer)
    model = scorer.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    test = batch(rng, 256, "presence" if args.task == "presence" else "relation")
    started = time.perf_counter()
    for step in range(args.steps):
        winners, losers, prompts, flipped = batch(rng, 32, args.task)
        text = scorer.prompt_batch(prompts + flipped)   # mirrored: under the flipped prompt the loser wins
        w, l = torch.cat([winners, losers]), torch.cat([losers, winners])
        loss = bradley_terry_loss(model(w, text)[0], model(l, text)[0])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            model.eval()
            with torch.no_grad():
                accuracy = (scorer(test[0], test[2]) > scorer(test[1], test[2])).float().mean().item()
            model.train()
            print(f"step {step}: loss {loss.item():.4f}, test accuracy {accuracy:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
