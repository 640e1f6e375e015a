"""The shapes-world FLUX model: exact pixel VAE, T5 window, tokenizer, offline save/reload."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from l2s.errors import ModelLoadError, TokenizationError
from l2s.shapes import (
    COLOURS,
    SHAPES,
    SHIPPED_MODEL_DIR,
    TINY_CONFIG,
    PixelShuffleVAE,
    build_shapes_pipeline,
    load_shapes_pipeline,
    shapes_t5_tokenizer,
)


@pytest.fixture(scope="module")
def tiny_pipe() -> FluxPipeline:
    return build_shapes_pipeline(TINY_CONFIG, seed=0)


def test_pixel_vae_round_trip_is_exact_and_sets_the_pipeline_scale():
    vae = PixelShuffleVAE(downscale_factor=2)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latent = vae.encode(images).latent_dist
    assert latent.mode().shape == (2, 12, 16, 16)
    assert torch.equal(vae.decode(latent.sample(), return_dict=False)[0], images)
    assert torch.equal(vae.decode(latent.mode()).sample, images)
    assert vae.config.block_out_channels == (3, 12) and vae.config.latent_channels == 12
    assert build_shapes_pipeline(TINY_CONFIG).vae_scale_factor == 2
    with pytest.raises(ValueError):
        PixelShuffleVAE(downscale_factor=3)


def test_tokenizer_has_one_token_per_world_word():
    tokenizer = shapes_t5_tokenizer()
    for word in SHAPES + tuple(COLOURS) + ("left", "right", "above", "below", "top", "photo"):
        assert tokenizer.tokenize(f"a {word}") == ["▁a", f"▁{word}"], word
    ids = tokenizer("a red circle to the left of a blue square").input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids


def test_t5_window_is_independent_of_max_sequence_length(tiny_pipe):
    short = tiny_pipe.encode_prompt("a red circle above a blue square", None, max_sequence_length=16)[0]
    padded = tiny_pipe.encode_prompt("a red circle above a blue square", None, max_sequence_length=512)[0]
    assert short.shape == padded.shape == (1, TINY_CONFIG.text_window, TINY_CONFIG.text_dim)
    torch.testing.assert_close(short, padded, rtol=0, atol=0)
    with pytest.raises(TokenizationError):
        tiny_pipe.encode_prompt(" ".join(["a red circle"] * 20), None, max_sequence_length=512)


def test_pipeline_saves_and_reloads_offline(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path, safe_serialization=True)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["l2s.shapes.model", "PixelShuffleVAE"]
    assert list(tmp_path.glob("*/*.bin")) == []  # safetensors only

    def sample(pipe):
        return pipe("a red circle and a blue square", height=32, width=32, num_inference_steps=2,
                    guidance_scale=0.0, output_type="np", generator=torch.Generator().manual_seed(0)).images

    reloaded = load_shapes_pipeline(tmp_path)
    plain = FluxPipeline.from_pretrained(tmp_path, local_files_only=True)
    image = sample(reloaded)
    assert image.shape == (1, 32, 32, 3)
    # Same weights, same noise: equal up to float rounding of the reloaded module layouts.
    np.testing.assert_allclose(image, sample(tiny_pipe), atol=1e-6)
    np.testing.assert_allclose(image, sample(plain), atol=1e-6)
    with pytest.raises(ModelLoadError):
        load_shapes_pipeline(tmp_path / "missing")


@pytest.mark.slow
def test_shipped_model_draws_the_named_colours():
    """The shipped model puts both named colours on the canvas (its shapes are rougher: the strict
    colour-and-shape rate is measured by the bench, experiments/results/shapes_accuracy.md)."""
    from l2s.shapes import ShapesDetector
    from l2s.shapes import SHAPES_STEPS

    if not (SHIPPED_MODEL_DIR / "model_index.json").is_file():
        pytest.skip(f"no shipped shapes model in {SHIPPED_MODEL_DIR}")
    pipe = load_shapes_pipeline()
    rng = np.random.default_rng(0)
    pairs = []
    while len(pairs) < 40:
        (ca, cb), (sa, sb) = rng.choice(list(COLOURS), 2, replace=False), rng.choice(SHAPES, 2)
        pairs.append((f"{ca} {sa}", f"{cb} {sb}"))
    images = pipe([f"a {a} and a {b}" for a, b in pairs], height=32, width=32, num_inference_steps=SHAPES_STEPS,
                  guidance_scale=0.0, generator=torch.Generator().manual_seed(0)).images
    detector = ShapesDetector()
    found = [all(detector.detect(img, [a.split()[0], b.split()[0]]).values()) for img, (a, b) in zip(images, pairs)]
    assert np.mean(found) >= 0.7
