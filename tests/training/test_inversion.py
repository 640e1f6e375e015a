"""RF-Inversion (FLUX), fixed-point DDIM inversion (SD) and the dual pos/neg prompts, on tiny models."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from l2s.capture import AttentionCapture
from l2s.errors import L2SError, TokenizationError
from l2s.training import (
    default_image_size,
    dual_invert,
    flux_sigmas,
    invert_and_capture,
    rf_inversion_mix,
    training_prompts,
)
from l2s.relations import DIAGONAL_CLASSES, PUBLISHED_CLASSES
from l2s.demo import tiny_flux_pipeline, tiny_sd_pipeline

SEQ = 64  # shorter T5 padding than the published 512 keeps the tiny runs fast; nothing depends on it




@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline(num_layers=2, num_single_layers=1, seed=0)


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(0)
    # A non-square picture: FLUX resizes it, SD centre-crops it.
    return Image.fromarray((rng.rand(40, 48, 3) * 255).astype("uint8"))


def _flux(pipe, image, prompt="A cat to the left of a dog", pairs=(("cat", "dog"),), **kwargs):
    kwargs = {"steps": 4, "store_steps": (1, 3), "seed": 0, "size": 32, "max_sequence_length": SEQ, **kwargs}
    return invert_and_capture(pipe, image, prompt, list(pairs), **kwargs)


def test_flux_maps_have_classifier_shape_at_every_stored_step(flux, image):
    channels = AttentionCapture(flux.transformer)
    c = channels.channels()
    channels.remove()
    result = _flux(flux, image, "A white cat to the left of a dog", pairs=[("cat", "dog"), ("dog", "white cat")])
    assert c == 3 * 2  # 2 double + 1 single block, 2 heads each
    assert sorted(result.maps) == [1, 3]
    for maps in result.maps.values():
        assert maps.shape == (2, 2, c, 16, 16) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all() and maps.min() >= 0
    # Pair 1's subject is pair 0's object: the same phrase gives the same maps.
    assert torch.equal(result.maps[1][1, 0], result.maps[1][0, 1])
    assert np.isfinite(result.psnr) and 0 < result.psnr <= 100
    assert default_image_size(flux) == 32  # schnell-like: token grid 16 -> 16x16 maps, no resize


def test_flux_closed_form_equals_the_ode_path(flux, image):
    exact = _flux(flux, image, method="exact")
    ode = _flux(flux, image, method="ode")
    assert exact.method == "exact" and ode.method == "ode"
    for step in (1, 3):
        assert torch.allclose(exact.latents[step], ode.latents[step], atol=1e-5, rtol=1e-5)
        assert torch.allclose(exact.maps[step], ode.maps[step], atol=1e-6, rtol=1e-4)
    assert exact.psnr == pytest.approx(ode.psnr, abs=1e-3)
    # The ODE path really integrates the model: a weaker controller changes the trajectory.
    weak = _flux(flux, image, method="ode", gamma=0.5)
    assert (weak.latents[1] - exact.latents[1]).abs().max() > 1e-2
    # eta = 1 reconstructs exactly whatever the inversion did (the reverse ODE ends at y0).
    assert weak.psnr == pytest.approx(exact.psnr, abs=1e-3)


def test_rf_inversion_mix_matches_the_derivation(flux):
    # schnell, unshifted sigmas: a = 0.75 * 0.6875 * 0.5833 * 0.375
    assert rf_inversion_mix([1.0, 0.75, 0.5, 0.25, 0.0]) == pytest.approx(0.1128, abs=1e-4)
    # dev at 512 px: dynamic shift with mu = 0.63 (1024 image tokens), same schedule as FluxPipeline.
    from diffusers import FlowMatchEulerDiscreteScheduler

    dev_like = tiny_flux_pipeline(seed=0, guidance_embeds=True)
    dev_like.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                         max_shift=1.15, base_image_seq_len=256,
                                                         max_image_seq_len=4096)
    sigmas = flux_sigmas(dev_like, 50, image_seq_len=1024)
    assert len(sigmas) == 51 and sigmas[-1] == 0
    expected = {5: 0.9441, 10: 0.8825, 15: 0.8142, 20: 0.7380, 25: 0.6525, 49: 0.0369}
    for step, sigma in expected.items():
        assert sigmas[step] == pytest.approx(sigma, abs=2e-4)
    assert rf_inversion_mix(sigmas) == pytest.approx(5.4e-4, rel=0.05)


def test_flux_dev_inversion_uses_zero_guidance(image):
    pipe = tiny_flux_pipeline(seed=0, guidance_embeds=True)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["guidance"]), with_kwargs=True)
    try:
        result = _flux(pipe, image)
    finally:
        hook.remove()
    assert len(seen) == 2  # closed form: one forward per stored step
    assert all(g is not None and float(g.abs().max()) == 0.0 for g in seen)
    assert result.maps[1].shape[0] == 1


def _processors(model) -> dict[str, type]:
    return {name: type(processor) for name, processor in model.attn_processors.items()}


def test_the_call_removes_a_capture_of_its_own_also_when_it_raises(flux, image):
    stock = _processors(flux.transformer)
    _flux(flux, image)
    with pytest.raises(TokenizationError):
        _flux(flux, image, pairs=[("cat", "horse")])
    assert _processors(flux.transformer) == stock
    capture = AttentionCapture(flux.transformer)   # the caller's own stays installed for its next call
    try:
        _flux(flux, image, capture=capture)
        assert _processors(flux.transformer) != stock
    finally:
        capture.remove()


def test_flux_inversion_is_seeded(flux, image):
    a, b, c = _flux(flux, image, seed=3), _flux(flux, image, seed=3), _flux(flux, image, seed=4)
    assert torch.equal(a.maps[1], b.maps[1]) and torch.equal(a.latents[3], b.latents[3])
    assert not torch.equal(a.latents[1], c.latents[1])


def test_sd_fixed_point_inversion_captures_every_stored_step(sd, image):
    capture = AttentionCapture(sd.unet)
    channels = capture.channels()
    try:
        result = invert_and_capture(sd, image, "A cat above a dog", [("cat", "dog")], steps=4, store_steps=(1, 3),
                                    seed=0, size=32, num_iter=2, capture=capture)
    finally:
        capture.remove()
    assert channels == 7 * 2  # 7 cross-attention layers x 2 heads
    assert sorted(result.maps) == [1, 3]
    for maps in result.maps.values():
        assert maps.shape == (1, 2, channels, 16, 16)
        # Several resolutions -> every map resized and renormalised to sum 1.
        assert torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(1, 2, channels), atol=1e-4)
    assert np.isfinite(result.psnr)
    again = invert_and_capture(sd, image, "A cat above a dog", [("cat", "dog")], steps=4, store_steps=(1, 3),
                               seed=0, size=32, num_iter=2)
    assert torch.equal(result.maps[3], again.maps[3])
    # More fixed-point iterations change the inverted latent (the iteration is really run).
    other = invert_and_capture(sd, image, "A cat above a dog", [("cat", "dog")], steps=4, store_steps=(1, 3),
                               seed=0, size=32, num_iter=1)
    assert not torch.equal(result.latents[1], other.latents[1])


def test_training_prompts_follow_the_published_templates():
    rng = random.Random(0)
    pos, neg = training_prompts("cat", "left of", "dog", rng)
    assert (pos.prompt, pos.prompt_type, pos.label) == ("A cat to the left of a dog", "pos", "to the left of")
    assert neg.prompt_type == "neg" and neg.label == "to the left of"
    assert neg.relation_word in PUBLISHED_CLASSES and neg.relation_word != "to the left of"
    assert neg.prompt == f"A cat {neg.relation_word} a dog"
    # Neutral class: object-attribute pair, maps of (noun, attribute).
    pos, neg = training_prompts("car", "is", "white", random.Random(1))
    assert pos.prompt == "A white car" and (pos.subject, pos.object) == ("car", "white")
    assert neg.prompt == f"A white {neg.relation_word} a car" and neg.relation_word != "is"
    assert neg.label == "is"
    # The wrong relation is uniform over the 4 other classes, "is" included.
    drawn = {training_prompts("cat", "above", "dog", random.Random(s))[1].relation_word for s in range(60)}
    assert drawn == set(PUBLISHED_CLASSES) - {"above"}
    assert len(training_prompts("cat", "above", "dog", rng, dual=False)) == 1
    pos, neg = training_prompts("cat", "top-left of", "dog", random.Random(0), DIAGONAL_CLASSES)
    assert pos.prompt == "A cat top-left of a dog" and neg.relation_word in DIAGONAL_CLASSES


def test_dual_inversion_labels_both_prompts_with_the_true_relation(flux, image):
    records = dual_invert(flux, image, "cat", "above", "dog", seed=5, steps=4, store_steps=(1, 3), size=32,
                          max_sequence_length=SEQ)
    assert [r.prompt.prompt_type for r in records] == ["pos", "neg"]
    assert {r.prompt.label for r in records} == {"above"}
    assert records[1].prompt.relation_word != "above"
    # Same seed: the same trajectory, only the prompt (hence the maps) differs.
    assert torch.equal(records[0].result.latents[1], records[1].result.latents[1])
    assert not torch.equal(records[0].result.maps[1], records[1].result.maps[1])
    single = dual_invert(flux, image, "cat", "above", "dog", seed=5, dual=False, steps=4, store_steps=(1, 3),
                         size=32, max_sequence_length=SEQ)
    assert len(single) == 1 and torch.equal(single[0].result.maps[3], records[0].result.maps[3])


def test_bad_requests_raise_clear_errors(flux, image):
    with pytest.raises(L2SError, match=r"store_steps 1 4 must lie in \[0, 4\) for steps 4"):
        _flux(flux, image, store_steps=(1, 4))
    with pytest.raises(L2SError, match="gamma = eta = 1"):
        _flux(flux, image, method="exact", gamma=0.5)
    with pytest.raises(TokenizationError, match="horse"):
        _flux(flux, image, pairs=[("cat", "horse")])
    with pytest.raises(L2SError, match="multiple of 2"):
        _flux(flux, image, size=33)
    for zero in (dict(steps=0), dict(size=0)):   # 0 is refused, never replaced by the default
        with pytest.raises(L2SError, match="must be positive"):
            _flux(flux, image, **zero)
