"""Data-parallel classifier training: N processes share every batch.

One process trains on batches of ``batch_size`` samples in one seeded shuffled order. N processes
(``torchrun`` / ``accelerate launch``, :mod:`l2s.distributed`) draw the same order from the same
seeded generator and split each of those global batches: rank r takes every N-th sample of it.
Each rank's loss is its samples' summed loss divided by the global batch's size, times the ranks,
and DDP averages the gradients over the ranks, so every rank takes the optimizer step of the global
batch's mean loss: the step one process takes, up to the order of float additions. Validation is split
the same way and its sums merged. Each rank draws its own dropout masks (rank 0 keeps the
one-process stream), so runs with dropout are equal to a one-process run in distribution, and
without dropout equal to rounding.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, Dataset, Sampler, Subset
from torch.utils.data.dataloader import default_collate

from l2s.distributed import World

# Added to the seed for rank r's dropout stream (times r): any constant keeps the ranks apart.
RANK_SEED_STRIDE = 1_000_003


class RankBatches(Sampler[list[int]]):
    """This rank's slice of every global batch of ``sampler``'s order (possibly empty at the end)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, world: World) -> None:
        self.sampler, self.batch_size, self.world = sampler, batch_size, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in BatchSampler(self.sampler, self.batch_size, drop_last=False):
            yield batch[self.world.rank::self.world.size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def collate_slice(items: list):
    """Collate a rank's slice; None for an empty one (the rank still joins the gradient sum)."""
    return default_collate(items) if items else None


def stand_in(dataset: Dataset) -> list[torch.Tensor]:
    """What a rank with an empty slice runs with weight 0: the first item with its maps zeroed (finite,
    so its gradient times 0 is 0; a NaN map of the dataset's would make the common gradient NaN)."""
    maps, steps, labels = collate_slice([dataset[0]])
    return [torch.zeros_like(maps), steps, labels]


def global_batch_size(number: int, batch_size: int, total: int) -> int:
    """Samples in global batch ``number`` (0-based) of ``total`` samples: the last may be short."""
    return min(batch_size, total - number * batch_size)


def val_share(dataset: Dataset, world: World) -> Dataset:
    """Every N-th validation item from position ``rank``."""
    return Subset(dataset, range(world.rank, len(dataset), world.size)) if world.spread else dataset


def seed_dropout(seed: int, world: World) -> None:
    """Give each rank its own dropout stream, after the (shared) initial weights were drawn."""
    if world.rank:
        torch.manual_seed(seed + RANK_SEED_STRIDE * world.rank)


def rng_states(devices: list[int]) -> dict:
    """This rank's RNG streams, saved per rank so a resumed spread run draws what it would have."""
    states = {"cpu": torch.get_rng_state()}
    if devices:
        states["cuda"] = torch.cuda.get_rng_state(devices[0])
    return states


def restore_rng(state: dict, world: World, devices: list[int]) -> None:
    """This rank's streams from a resume state (``cpu_rng`` and ``cuda_rng``: rank 0's)."""
    ranks = state.get("rank_rngs")
    mine = ranks[world.rank] if ranks and world.rank < len(ranks) else {"cpu": state["cpu_rng"]}
    torch.set_rng_state(mine["cpu"])
    cuda = mine.get("cuda", state.get("cuda_rng") if world.rank == 0 else None)
    if devices and cuda is not None:
        torch.cuda.set_rng_state(cuda, devices[0])
