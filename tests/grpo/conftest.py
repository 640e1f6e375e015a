"""A tiny shapes-world FluxPipeline (random weights, 16 px) and a reward that is cheap and has spread."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from l2s.grpo import GRPOSettings
from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

PROMPTS = ["a red circle to the left of a blue square", "a green triangle above a yellow square",
           "a purple circle below a red triangle", "a blue square to the right of a green circle"]


def make_tiny_pipe():
    return build_shapes_pipeline(replace(TINY_CONFIG, image_size=16), seed=0)


@pytest.fixture
def tiny_pipe():
    """A fresh pipeline per test: GRPO injects its adapter into the transformer."""
    return make_tiny_pipe()


def redness(images, prompts):
    """Mean red channel: a smooth reward that differs between any two images."""
    return torch.tensor([np.asarray(im, dtype=np.float32)[..., 0].mean() / 255 for im in images])


def tiny_settings(**overrides) -> GRPOSettings:
    base = GRPOSettings(epochs=2, prompts_per_epoch=2, group_size=12, top_k=3, steps=4, size=16, chunk=8,
                        true_cfg=2.0, max_sequence_length=32, eval_seeds=(0,), lr=1e-2, clip_range=0.2)
    return replace(base, **overrides)
