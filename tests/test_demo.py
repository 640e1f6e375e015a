"""The tiny offline pipelines: tokenizers, end-to-end generation, determinism, save/reload."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline

from l2s.demo import (
    COCO_CLASSES,
    COLOUR_WORDS,
    RELATION_WORDS,
    SHAPE_WORDS,
    tiny_clip_tokenizer,
    tiny_flux_pipeline,
    tiny_sd_pipeline,
    tiny_t5_tokenizer,
)
from l2s.pipelines.loading import save_pipeline

PROMPT = "a photo of a teddy bear to the left of a red circle"


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def flux_dev():
    return tiny_flux_pipeline(guidance_embeds=True)


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline()


def run_flux(pipe, size, guidance_scale=0.0, seed=0, max_sequence_length=64):
    """Two steps at ``size``; returns (image tensor, packed latents seen at the last step)."""
    seen = {}

    def keep_latents(pipeline, step, timestep, tensors):
        seen["latents"] = tensors["latents"]
        return tensors

    out = pipe(
        PROMPT,
        height=size,
        width=size,
        num_inference_steps=2,
        guidance_scale=guidance_scale,
        max_sequence_length=max_sequence_length,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        callback_on_step_end=keep_latents,
    )
    return out.images, seen["latents"]


def run_sd(pipe, size, seed=0):
    out = pipe(
        PROMPT,
        height=size,
        width=size,
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    )
    return out.images


# ---- tokenizers ---------------------------------------------------------------------------------


def test_clip_tokenizer_is_character_level_with_clip_special_tokens():
    tokenizer = tiny_clip_tokenizer()
    assert len(tokenizer) == 514 and tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (512, 513, 513)
    ids = tokenizer("Cat dog")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "c", "a", "t</w>", "d", "o", "g</w>", "<|endoftext|>",
    ]  # fmt: skip
    # Padded and truncated exactly as the pipelines ask.
    long_ids = tokenizer("x" * 200, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert len(long_ids) == 77 and long_ids[0] == 512 and long_ids[-1] == 513


def test_t5_tokenizer_layout_and_vocabulary():
    tokenizer = tiny_t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) < 1103 and tokenizer.model_max_length == 512
    words = [w for name in COCO_CLASSES for w in name.split()]
    words += (RELATION_WORDS + " " + COLOUR_WORDS + " " + SHAPE_WORDS).split() + list("0123456789")
    for word in words:
        ids = tokenizer(f"a {word}")["input_ids"]
        assert len(ids) == 3 and ids[-1] == 1 and ids[1] != 2, word  # one known token, then </s>
    assert len(COCO_CLASSES) == 80
    assert tokenizer("A Giraffes zzq")["input_ids"][-1] == 1
    assert tokenizer.decode(tokenizer(PROMPT)["input_ids"], skip_special_tokens=True) == PROMPT


# ---- FLUX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, grid", [(32, 16), (64, 32)])
def test_flux_runs_end_to_end(flux, size, grid):
    image, latents = run_flux(flux, size)
    assert image.shape == (1, 3, size, size) and torch.isfinite(image).all()
    # One token per 2x2 latent patch (the VAE does not downsample): grid x grid tokens, 4 channels.
    assert latents.shape == (1, grid * grid, 4)
    assert flux.transformer.config.guidance_embeds is False


def test_flux_dev_uses_guidance_embedding(flux_dev):
    assert flux_dev.transformer.config.guidance_embeds is True
    low, _ = run_flux(flux_dev, 32, guidance_scale=1.0)
    high, _ = run_flux(flux_dev, 32, guidance_scale=5.0)
    assert low.shape == (1, 3, 32, 32)
    assert not torch.equal(low, high)  # the guidance value reaches the transformer


def test_flux_full_t5_length_and_block_counts():
    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=3)
    assert len(pipe.transformer.transformer_blocks) == 2
    assert len(pipe.transformer.single_transformer_blocks) == 3
    image, _ = run_flux(pipe, 32, max_sequence_length=512)
    assert torch.isfinite(image).all()


def test_builders_are_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny_flux_pipeline(seed=0), tiny_flux_pipeline(seed=0), tiny_flux_pipeline(seed=1)
    assert torch.equal(torch.rand(3), expected)
    for name, weight in a.transformer.state_dict().items():
        assert torch.equal(weight, b.transformer.state_dict()[name]), name
    assert torch.equal(a.text_encoder_2.shared.weight, b.text_encoder_2.shared.weight)
    assert not torch.equal(a.transformer.proj_out.weight, c.transformer.proj_out.weight)
    assert not torch.equal(a.text_encoder.get_input_embeddings().weight,
                           c.text_encoder.get_input_embeddings().weight)  # fmt: skip


# ---- Stable Diffusion ---------------------------------------------------------------------------


def test_sd_runs_end_to_end_with_cross_attention_at_two_resolutions(sd):
    cross = {n: m for n, m in sd.unet.named_modules() if n.endswith("attn2")}
    assert len(cross) == 7 and all(m.heads == 2 for m in cross.values())
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size == 32
    assert sd.safety_checker is None
    for size in (32, 64):
        image = run_sd(sd, size)
        assert image.shape == (1, 3, size, size) and torch.isfinite(image).all()
    assert not torch.equal(run_sd(sd, 32, seed=0), run_sd(sd, 32, seed=1))


# ---- save / reload offline ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flux-dev", "sd"])
def test_save_and_reload_offline(kind, flux_dev, sd, tmp_path, umask_022):
    pipe = {"flux-dev": flux_dev, "sd": sd}[kind]
    cls = FluxPipeline if kind == "flux-dev" else StableDiffusionPipeline
    reloaded = cls.from_pretrained(save_pipeline(pipe, tmp_path / kind), local_files_only=True)
    assert set(umask_022(tmp_path / kind).values()) == {0o644}   # the weights too (0600 from diffusers alone)
    names = ["tokenizer", "tokenizer_2"] if kind == "flux-dev" else ["tokenizer"]
    for name in names:
        original, loaded = getattr(pipe, name), getattr(reloaded, name)
        assert type(loaded) is type(original) and loaded.model_max_length == original.model_max_length
        assert len(loaded) == len(original)
        encoded = original(PROMPT, return_offsets_mapping=True)
        assert loaded(PROMPT, return_offsets_mapping=True) == encoded
    if kind == "flux-dev":
        before, after = run_flux(pipe, 32, 3.5)[0], run_flux(reloaded, 32, 3.5)[0]
    else:
        before, after = run_sd(pipe, 32), run_sd(reloaded, 32)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
