"""A word tokenizer and a synthetic pair folder: a bright blob on the side the prompt names wins."""
from __future__ import annotations

import numpy as np
import pytest

from l2s.reward.pairs import check_manifest, write_shard
from l2s.tokenizers import word_t5_tokenizer

TINY_MODEL = {"d_model": 16, "heads": 2, "text_layers": 1, "joint_layers": 1, "channels": (8, 16), "ff_mult": 2}


@pytest.fixture(scope="session")
def tokenizer():
    return word_t5_tokenizer(["a", "blob", "on", "the", "left", "right"], extra_ids=0)


def blob(side: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    image = np.full((size, size, 3), 240, np.uint8)
    x = int(rng.integers(0, size // 2 - 4)) + (size // 2 if side == "right" else 0)
    y = int(rng.integers(0, size - 4))
    image[y:y + 4, x:x + 4] = (200, 30, 30)
    return image


def make_blob_pairs(folder, n: int = 96, seed: int = 0, heldout_every: int = 4, drop_every: int = 0) -> None:
    """``n`` pairs in shards of 32: prompt "a blob on the <side>", winner with the blob there,
    loser on the other side; every ``heldout_every``-th pair is held out; with ``drop_every``
    every such pair's loser is blank instead (a dropped-object pair)."""
    rng = np.random.default_rng(seed)
    check_manifest(folder, {"synthetic": "blobs", "seed": seed})
    for shard in range(0, n, 32):
        images, records = [], []
        for i in range(shard, min(n, shard + 32)):
            side, other = ("left", "right") if rng.random() < 0.5 else ("right", "left")
            drop = bool(drop_every) and i % drop_every == 1
            winner = blob(side, rng)
            images += [winner, np.full_like(winner, 240) if drop else blob(other, rng)]
            records.append({"prompt": f"a blob on the {side}", "perturbed": "a" if drop else f"a blob on the {other}",
                            "winner": len(images) - 2, "loser": len(images) - 1, "flips": 0 if drop else 1 + i % 2,
                            "pattern": "blob", "objects": f"group{i % 12}",
                            "split": "heldout" if i % heldout_every == 0 else "train", **({"kind": "drop"} if drop else {})})
        write_shard(folder, shard // 32, np.stack(images), records)
