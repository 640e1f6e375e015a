"""The relational SpatialScore learns which way a relation goes from mirrored preference pairs of
rendered shapes (the joint design stays at chance on the same pairs: experiments/notebook/reward-model.md)."""
from __future__ import annotations

import numpy as np
import torch

from l2s.relations import PROMPT_PHRASE
from l2s.reward import SpatialScore, SpatialScoreConfig, SpatialScorer
from l2s.reward.losses import bradley_terry_loss
from l2s.shapes import render, shapes_t5_tokenizer
from l2s.shapes.scenes import scene_for_relation

FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _pairs(rng, n):
    winners, losers, prompts, flipped = [], [], [], []
    for _ in range(n):
        colours = rng.choice(["red", "green", "blue", "yellow", "purple"], 2, replace=False)
        first, second = (("circle", colours[0]), ("square", colours[1]))
        relation = list(FLIP)[rng.integers(4)]
        for images, r in ((winners, relation), (losers, FLIP[relation])):
            images.append(np.asarray(render(scene_for_relation(rng, first, r, second, size=32))))
        for texts, r in ((prompts, relation), (flipped, FLIP[relation])):
            texts.append(f"a {first[1]} {first[0]} {PROMPT_PHRASE[r]} a {second[1]} {second[0]}")
    to_tensor = lambda x: torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return to_tensor(winners), to_tensor(losers), prompts, flipped


def test_the_relational_design_learns_relations_from_mirrored_pairs():
    torch.manual_seed(0)
    rng, tokenizer = np.random.default_rng(0), shapes_t5_tokenizer()
    config = SpatialScoreConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, image_size=32,
                                channels=(16, 32, 64), d_model=32, design="relational")
    scorer = SpatialScorer(SpatialScore(config), tokenizer)
    test = _pairs(rng, 64)
    before = (scorer(test[0], test[2]) > scorer(test[1], test[2])).float().mean().item()
    model = scorer.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(80):
        winners, losers, prompts, flipped = _pairs(rng, 16)
        text = scorer.prompt_batch(prompts + flipped)
        loss = bradley_terry_loss(model(torch.cat([winners, losers]), text)[0], model(torch.cat([losers, winners]), text)[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = (scorer(test[0], test[2]) > scorer(test[1], test[2])).float().mean().item()
    assert before < 0.75 and after >= 0.95, (before, after)
