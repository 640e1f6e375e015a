"""A tiny classifier and random maps shared by the classifier tests."""
from __future__ import annotations

import torch

from l2s.classifier import ClassifierConfig, RelationClassifier

C, M = 6, 4  # channels and map size of the tiny test classifier


def tiny_config(**overrides) -> ClassifierConfig:
    fields = dict(channels=C, map_size=M, d_model=16, pe_length=12, timesteps=(1, 3, 5), num_timesteps=6,
                  extractor_layers=2, extractor_heads=2, extractor_ff=32, pool_heads=2,
                  head_layers=2, head_heads=2, head_ff=32, step_embedding_dim=4, model_family="custom")
    fields.update(overrides)
    return ClassifierConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> RelationClassifier:
    torch.manual_seed(seed)
    return RelationClassifier(tiny_config(**overrides)).eval()


def random_maps(batch: int = 3, channels: int = C, size: int = M, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2, channels, size, size, generator=generator)
