"""Tests for l2s.capture: selected cross-attention maps on tiny random FLUX and SD UNet models."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel, UNet2DConditionModel

import l2s.capture.recording as capture_module
from l2s.capture import AttentionCapture, ExplicitAttentionReference
from l2s.errors import ClassifierMismatchError, L2SError, TokenizationError

TOL = dict(rtol=0.0, atol=1e-5)

# ---------------------------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------------------------

FLUX_BATCH, FLUX_GRID, FLUX_TEXT_LEN = 2, (4, 6), 10  # non-square token grid
FLUX_GROUPS = [[1], [3, 4], [7]]  # a multi-token object in the middle


@pytest.fixture(scope="module")
def flux() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def flux_inputs() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    height, width = FLUX_GRID
    rows, cols = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return {
        "hidden_states": torch.randn(FLUX_BATCH, height * width, 4),
        "encoder_hidden_states": torch.randn(FLUX_BATCH, FLUX_TEXT_LEN, 32),
        "pooled_projections": torch.randn(FLUX_BATCH, 32),
        "timestep": torch.full((FLUX_BATCH,), 0.5),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(FLUX_TEXT_LEN, 3),
    }


def run_flux(model, inputs, latent=None) -> torch.Tensor:
    kwargs = dict(inputs)
    if latent is not None:
        kwargs["hidden_states"] = latent
    return model(**kwargs).sample


SD_BATCH, SD_LATENT_HW, SD_TEXT_LEN = 2, (8, 12), 7
SD_GROUPS = [[1], [3, 4]]
# Execution order of the tiny UNet's cross-attention layers, with heads and grids at latent 8x12.
SD_LAYOUT = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 2, (8, 12)),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2", 4, (4, 6)),
    ("mid_block.attentions.0.transformer_blocks.0.attn2", 4, (4, 6)),
    ("up_blocks.0.attentions.0.transformer_blocks.0.attn2", 4, (4, 6)),
    ("up_blocks.0.attentions.1.transformer_blocks.0.attn2", 4, (4, 6)),
    ("up_blocks.1.attentions.0.transformer_blocks.0.attn2", 2, (8, 12)),
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn2", 2, (8, 12)),
]


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(2)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),  # diffusers reads these as head counts: heads differ per block, as in SD2.1
        norm_num_groups=4,
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet_inputs() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {
        "sample": torch.randn(SD_BATCH, 4, *SD_LATENT_HW),
        "timestep": 10,
        "encoder_hidden_states": 3 * torch.randn(SD_BATCH, SD_TEXT_LEN, 32),
    }


def run_unet(model, inputs, latent=None) -> torch.Tensor:
    kwargs = dict(inputs)
    if latent is not None:
        kwargs["sample"] = latent
    return model(**kwargs).sample


def maps_and_latent_gradient(capture_cls, model, run, inputs, latent_key, groups, text_len, latent_hw, seed=5):
    """Record maps with ``capture_cls``; return (output, maps, d(sum maps * fixed weights)/d latent)."""
    latent = inputs[latent_key].clone().requires_grad_(True)
    with capture_cls(model) as capture:
        with capture.recording(groups, text_len, latent_hw) as captured:
            output = run(model, inputs, latent)
        # Backward after the recording block (a gradient-checkpoint recompute then runs outside it).
        generator = torch.Generator().manual_seed(seed)
        weights = [torch.randn(layer.maps.shape, generator=generator) for layer in captured.layers]
        objective = sum((layer.maps * weight).sum() for layer, weight in zip(captured.layers, weights))
        (gradient,) = torch.autograd.grad(objective, latent)
    return output.detach(), captured, gradient


# ---------------------------------------------------------------------------------------------
# FLUX
# ---------------------------------------------------------------------------------------------


def test_flux_maps_and_gradients_match_explicit_reference(flux, flux_inputs):
    args = (flux, run_flux, flux_inputs, "hidden_states", FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID)
    fast_out, fast, fast_grad = maps_and_latent_gradient(AttentionCapture, *args)
    ref_out, ref, ref_grad = maps_and_latent_gradient(ExplicitAttentionReference, *args)

    assert [layer.name for layer in fast.layers] == [layer.name for layer in ref.layers]
    assert len(fast.layers) == 4
    for fast_layer, ref_layer in zip(fast.layers, ref.layers):
        assert fast_layer.maps.shape == (FLUX_BATCH, 2, 24, len(FLUX_GROUPS))
        assert fast_layer.grid == FLUX_GRID
        torch.testing.assert_close(fast_layer.maps, ref_layer.maps, **TOL)
        # Non-trivial maps: not the uniform 1/T of a degenerate attention.
        assert (fast_layer.maps[..., 0] - 1 / FLUX_TEXT_LEN).abs().max() > 1e-3
    assert fast_grad.abs().max() > 1e-3
    torch.testing.assert_close(fast_grad, ref_grad, **TOL)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-5, atol=1e-5)


def test_flux_output_equals_stock_processors(flux, flux_inputs):
    with torch.no_grad():
        stock = run_flux(flux, flux_inputs)
        with AttentionCapture(flux) as capture:
            not_recording = run_flux(flux, flux_inputs)
            with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID) as captured:
                recording = run_flux(flux, flux_inputs)
    assert len(captured.layers) == 4
    assert torch.equal(not_recording, stock)
    torch.testing.assert_close(recording, stock, rtol=1e-5, atol=1e-6)


def test_flux_maps_are_softmax_over_text_keys_only(flux, flux_inputs):
    # One group per text token plus one group of all tokens: per image query the single-token maps
    # sum to 1 (text-only softmax, not the joint one) and the all-token mean is exactly 1/T.
    groups = [[token] for token in range(FLUX_TEXT_LEN)] + [list(range(FLUX_TEXT_LEN))]
    with torch.no_grad(), AttentionCapture(flux) as capture:
        with capture.recording(groups, FLUX_TEXT_LEN, FLUX_GRID) as captured:
            run_flux(flux, flux_inputs)
    for layer in captured.layers:
        per_token = layer.maps[..., :FLUX_TEXT_LEN]
        torch.testing.assert_close(per_token.sum(-1), torch.ones_like(per_token[..., 0]), **TOL)
        torch.testing.assert_close(layer.maps[..., -1], torch.full_like(layer.maps[..., -1], 1 / FLUX_TEXT_LEN), **TOL)


def test_flux_gradient_checkpointing_backward_after_recording(flux, flux_inputs):
    args = (run_flux, flux_inputs, "hidden_states", FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID)
    _, _, plain_grad = maps_and_latent_gradient(AttentionCapture, flux, *args)
    checkpointed = copy.deepcopy(flux)
    checkpointed.enable_gradient_checkpointing()
    # The checkpoint recompute runs during backward, after recording() has ended.
    _, _, ckpt_grad = maps_and_latent_gradient(AttentionCapture, checkpointed, *args)
    torch.testing.assert_close(ckpt_grad, plain_grad, **TOL)


def test_flux_layer_order_layout_and_channels(flux):
    with AttentionCapture(flux) as capture:
        names = ["transformer_blocks.0.attn", "transformer_blocks.1.attn",
                 "single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"]
        assert capture.layer_names == names
        assert capture.layer_layout((16, 16)) == [(name, 2, (16, 16)) for name in names]
        assert capture.channels() == 8


def test_flux_layer_subset_in_execution_order(flux, flux_inputs):
    wanted = ["single_transformer_blocks.1.attn.processor", "transformer_blocks.0.attn"]
    with torch.no_grad(), AttentionCapture(flux, layers=wanted) as capture:
        assert capture.layer_names == ["transformer_blocks.0.attn", "single_transformer_blocks.1.attn"]
        assert capture.channels() == 4
        with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID) as captured:
            run_flux(flux, flux_inputs)
    assert [layer.name for layer in captured.layers] == capture.layer_names
    # Said as the channel mismatch is: counts and the first and last block, not the model's class or a list.
    with pytest.raises(ClassifierMismatchError) as refused:
        AttentionCapture(flux, layers=[f"transformer_blocks.{i}.attn" for i in range(8)])
    assert str(refused.value) == (
        "the classifier reads 8 attention layers (transformer_blocks.0 to transformer_blocks.7) but this model has 4 "
        "attention layers (transformer_blocks.0 to single_transformer_blocks.1) and no transformer_blocks.2: use a "
        "classifier trained for this model")
    with pytest.raises(ClassifierMismatchError, match=r"reads 1 attention layer \(transformer_blocks.9\) .* and "
                                                      r"no transformer_blocks.9: use a classifier trained for this "
                                                      r"model$"):
        AttentionCapture(flux, layers=["transformer_blocks.9.attn"])


def test_a_model_without_cross_attention_is_refused_in_one_line_whatever_layers_are_asked(flux):
    torch.manual_seed(2)
    plain = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D",
                                 cross_attention_dim=32, norm_num_groups=4)
    for layers in (None, ["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]):   # the latter: IndexError
        with pytest.raises(L2SError, match="^UNet2DConditionModel has no attention layers to capture$"):
            AttentionCapture(plain, layers=layers)
    with pytest.raises(L2SError, match=r"^no attention layers to capture were asked for \(layers=\[\]\)$"):
        AttentionCapture(flux, layers=[])


def test_flux_classifier_input_end_to_end_is_differentiable(flux, flux_inputs):
    latent = flux_inputs["hidden_states"].clone().requires_grad_(True)
    with AttentionCapture(flux) as capture:
        with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID) as captured:
            run_flux(flux, flux_inputs, latent)
        features = captured.classifier_input(subject=1, obj=2)
        assert features.shape == (FLUX_BATCH, 2, capture.channels(), 16, 16)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.sum((-2, -1)), torch.ones(FLUX_BATCH, 2, 8), **TOL)
    (gradient,) = torch.autograd.grad((features * torch.linspace(0, 1, 16)).sum(), latent)
    assert gradient.abs().max() > 0


# ---------------------------------------------------------------------------------------------
# Stable Diffusion UNet
# ---------------------------------------------------------------------------------------------


def test_sd_maps_and_gradients_match_explicit_reference(unet, unet_inputs):
    args = (unet, run_unet, unet_inputs, "sample", SD_GROUPS, SD_TEXT_LEN, SD_LATENT_HW)
    fast_out, fast, fast_grad = maps_and_latent_gradient(AttentionCapture, *args)
    ref_out, ref, ref_grad = maps_and_latent_gradient(ExplicitAttentionReference, *args)

    assert [(layer.name, layer.heads, layer.grid) for layer in fast.layers] == SD_LAYOUT
    for fast_layer, ref_layer in zip(fast.layers, ref.layers):
        height, width = fast_layer.grid
        assert fast_layer.maps.shape == (SD_BATCH, fast_layer.heads, height * width, len(SD_GROUPS))
        torch.testing.assert_close(fast_layer.maps, ref_layer.maps, **TOL)
        assert (fast_layer.maps[..., 0] - 1 / SD_TEXT_LEN).abs().max() > 1e-3
    assert fast_grad.abs().max() > 1e-3
    torch.testing.assert_close(fast_grad, ref_grad, **TOL)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-5, atol=1e-5)


def test_sd_output_equals_stock_processors(unet, unet_inputs):
    with torch.no_grad():
        stock = run_unet(unet, unet_inputs)
        with AttentionCapture(unet) as capture:
            not_recording = run_unet(unet, unet_inputs)
            with capture.recording(SD_GROUPS, SD_TEXT_LEN, SD_LATENT_HW) as captured:
                recording = run_unet(unet, unet_inputs)
    assert len(captured.layers) == len(SD_LAYOUT)
    assert torch.equal(not_recording, stock)
    torch.testing.assert_close(recording, stock, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("capture_cls", [AttentionCapture, functools.partial(AttentionCapture, backend="native"),
                                         ExplicitAttentionReference], ids=["sdpa", "native", "reference"])
def test_sd_fused_projections_give_the_unfused_maps_gradients_and_output(unet, unet_inputs, capture_cls):
    fused = copy.deepcopy(unet)
    fused.fuse_qkv_projections()          # FusedAttnProcessor2_0 everywhere, projecting with to_qkv / to_kv
    args = (run_unet, unet_inputs, "sample", SD_GROUPS, SD_TEXT_LEN, SD_LATENT_HW)
    fused_out, fused_maps, fused_grad = maps_and_latent_gradient(capture_cls, fused, *args)
    out, maps, grad = maps_and_latent_gradient(capture_cls, unet, *args)
    assert [layer.name for layer in fused_maps.layers] == [name for name, _, _ in SD_LAYOUT]
    for fused_layer, layer in zip(fused_maps.layers, maps.layers):
        torch.testing.assert_close(fused_layer.maps, layer.maps, rtol=1e-6, atol=1e-7)
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(fused_grad, grad, rtol=1e-5, atol=1e-6)   # float rounding of the fused matmuls
    torch.testing.assert_close(fused_out, out, rtol=1e-5, atol=1e-6)
    assert all(type(p).__name__ == "FusedAttnProcessor2_0" for p in fused.attn_processors.values())


def _with_doubled_fused_copies(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A fused copy of ``unet`` whose fused projections no longer equal the separate ones, so a
    forward shows which of them it read."""
    fused = copy.deepcopy(unet)
    fused.fuse_qkv_projections()
    with torch.no_grad():
        for module in fused.modules():
            for name in ("to_qkv", "to_kv"):
                if hasattr(module, name):
                    getattr(module, name).weight.mul_(2.0)
    return fused


def test_sd_capture_projects_as_the_processor_it_replaces_also_after_unfusing(unet, unet_inputs):
    fused = _with_doubled_fused_copies(unet)
    with torch.no_grad():
        stock_fused = run_unet(fused, unet_inputs)
        with AttentionCapture(fused) as capture:
            assert torch.equal(run_unet(fused, unet_inputs), stock_fused)
            with capture.recording(SD_GROUPS, SD_TEXT_LEN, SD_LATENT_HW):
                torch.testing.assert_close(run_unet(fused, unet_inputs), stock_fused, rtol=1e-5, atol=1e-6)
        # unfusing puts AttnProcessor2_0 back but leaves attn.fused_projections set and the copies there
        fused.unfuse_qkv_projections()
        stock_unfused = run_unet(fused, unet_inputs)
        assert not torch.allclose(stock_unfused, stock_fused)
        with AttentionCapture(fused):
            assert torch.equal(run_unet(fused, unet_inputs), stock_unfused)
    torch.testing.assert_close(stock_unfused, run_unet(unet, unet_inputs).detach(), rtol=0, atol=0)


def test_sd_fused_capture_processor_self_attention_is_diffusers_fused_processor(unet):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from l2s.capture.recording import CaptureState
    from l2s.capture.unet import CrossAttentionCaptureProcessor

    attn1 = _with_doubled_fused_copies(unet).down_blocks[0].attentions[0].transformer_blocks[0].attn1
    hidden = torch.randn(2, 5, attn1.query_dim, generator=torch.Generator().manual_seed(0))
    processor = CrossAttentionCaptureProcessor("attn1", CaptureState(), downsamplings=0, fused=True)
    with torch.no_grad():
        assert torch.equal(processor(attn1, hidden), FusedAttnProcessor2_0()(attn1, hidden))


def test_sd_layer_order_layout_and_channels(unet):
    with AttentionCapture(unet) as capture:
        assert capture.layer_names == [name for name, _, _ in SD_LAYOUT]
        assert capture.layer_layout(SD_LATENT_HW) == SD_LAYOUT
        assert capture.channels() == sum(heads for _, heads, _ in SD_LAYOUT)
        # Self-attention (attn1) stays stock.
        self_attention = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
        assert type(self_attention.processor).__name__ == "AttnProcessor2_0"


def test_sd_classifier_input_concatenates_resolutions_ascending(unet, unet_inputs):
    with torch.no_grad(), AttentionCapture(unet) as capture:
        with capture.recording(SD_GROUPS, SD_TEXT_LEN, SD_LATENT_HW) as captured:
            run_unet(unet, unet_inputs)
    features = captured.classifier_input(0, 1, map_size=16)
    assert features.shape == (SD_BATCH, 2, 22, 16, 16)
    # 4x6 layers (down1, mid, up0.0, up0.1: 16 channels) come before 8x12 layers (down0, up1.0, up1.1: 6).
    mid = captured.layers[2]
    expected = mid.maps[..., 1].reshape(SD_BATCH, mid.heads, 4, 6)
    expected = F.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=False)
    expected = expected / (expected.sum((-2, -1), keepdim=True) + 1e-8)
    torch.testing.assert_close(features[:, 1, 4:8], expected, **TOL)
    first_full_res = captured.layers[0].maps[..., 0].reshape(SD_BATCH, 2, 8, 12)
    expected = F.interpolate(first_full_res, size=(16, 16), mode="bilinear", align_corners=False)
    expected = expected / (expected.sum((-2, -1), keepdim=True) + 1e-8)
    torch.testing.assert_close(features[:, 0, 16:18], expected, **TOL)


# ---------------------------------------------------------------------------------------------
# Recording lifecycle
# ---------------------------------------------------------------------------------------------


def test_not_recording_computes_and_stores_nothing(flux, flux_inputs, monkeypatch):
    calls = []
    real = capture_module.selected_text_attention
    monkeypatch.setattr(capture_module, "selected_text_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad(), AttentionCapture(flux) as capture:
        run_flux(flux, flux_inputs)
        assert calls == []
        with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID) as captured:
            run_flux(flux, flux_inputs)
        assert len(calls) == 4
        recorded = [layer.maps for layer in captured.layers]
        run_flux(flux, flux_inputs)  # after the block: nothing more computed or stored
    assert len(calls) == 4
    assert len(captured.layers) == 4
    assert all(layer.maps is maps for layer, maps in zip(captured.layers, recorded))


def test_new_forward_replaces_previous_maps(flux, flux_inputs):
    other_latent = torch.randn_like(flux_inputs["hidden_states"])
    with torch.no_grad(), AttentionCapture(flux) as capture:
        with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID) as expected:
            run_flux(flux, flux_inputs, other_latent)
        with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID) as captured:
            run_flux(flux, flux_inputs)
            run_flux(flux, flux_inputs, other_latent)
            assert len(captured.layers) == 4
            captured.clear()
            assert captured.layers == []
            run_flux(flux, flux_inputs, other_latent)
    for layer, expected_layer in zip(captured.layers, expected.layers):
        torch.testing.assert_close(layer.maps, expected_layer.maps, rtol=0, atol=0)


def test_remove_restores_original_processors(flux, unet):
    for model in (flux, unet):
        before = dict(model.attn_processors)
        capture = AttentionCapture(model)
        after_install = model.attn_processors
        replaced = [name for name in before if after_install[name] is not before[name]]
        assert len(replaced) == len(capture.layer_names)
        with pytest.raises(L2SError, match="already has a capture"):
            AttentionCapture(model)
        capture.remove()
        assert all(model.attn_processors[name] is processor for name, processor in before.items())
        capture.remove()  # idempotent
        with pytest.raises(L2SError, match="removed"):
            with capture.recording([[0]], 4, (2, 2)):
                pass
    with AttentionCapture(flux):
        assert type(flux.transformer_blocks[0].attn.processor).__name__ == "FluxCaptureProcessor"
    assert type(flux.transformer_blocks[0].attn.processor).__name__ == "FluxAttnProcessor"


def test_recording_rejects_inconsistent_requests(flux, flux_inputs):
    with torch.no_grad(), AttentionCapture(flux) as capture:
        with pytest.raises(TokenizationError, match="outside the text"):
            with capture.recording([[1], [FLUX_TEXT_LEN]], FLUX_TEXT_LEN, FLUX_GRID):
                pass
        with pytest.raises(TokenizationError, match="empty"):
            with capture.recording([[1], []], FLUX_TEXT_LEN, FLUX_GRID):
                pass
        with pytest.raises(L2SError, match="text_len"):
            with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN + 1, FLUX_GRID):
                run_flux(flux, flux_inputs)
        with pytest.raises(L2SError, match="grid"):
            with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, (6, 6)):
                run_flux(flux, flux_inputs)
        with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID):
            with pytest.raises(L2SError, match="already active"):
                with capture.recording(FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID):
                    pass
    with pytest.raises(L2SError, match="supports"):
        AttentionCapture(torch.nn.Linear(2, 2))


@pytest.mark.gpu
def test_cuda_maps_use_memory_efficient_sdpa_and_match_reference(flux, flux_inputs):
    model = copy.deepcopy(flux).cuda()
    inputs = {name: value.cuda() for name, value in flux_inputs.items()}
    args = (model, run_flux, inputs, "hidden_states", FLUX_GROUPS, FLUX_TEXT_LEN, FLUX_GRID)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        _, fast, fast_grad = maps_and_latent_gradient(AttentionCapture, *args)
    ops = {event.key for event in profile.key_averages()}
    assert "aten::_scaled_dot_product_efficient_attention" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops
    _, ref, ref_grad = maps_and_latent_gradient(ExplicitAttentionReference, *args)
    for fast_layer, ref_layer in zip(fast.layers, ref.layers):
        torch.testing.assert_close(fast_layer.maps, ref_layer.maps, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast_grad, ref_grad, rtol=1e-3, atol=1e-4)


def test_stop_after_last_layer_gives_the_same_maps_and_skips_the_rest():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    inputs = dict(hidden_states=torch.randn(1, 16, 4), encoder_hidden_states=torch.randn(1, 8, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))
    calls = []
    model.proj_out.register_forward_hook(lambda *a: calls.append("proj_out"))
    with AttentionCapture(model) as capture:
        with capture.recording([[1], [3, 4]], text_len=8, latent_hw=(4, 4)) as full:
            model(**inputs)
        assert calls == ["proj_out"]
        with capture.recording([[1], [3, 4]], text_len=8, latent_hw=(4, 4), stop_after_last=True) as cut:
            model(**inputs)
            raise AssertionError("the forward should have stopped after the last captured layer")
        assert calls == ["proj_out"]                        # the output head did not run again
        assert torch.equal(full.classifier_input(0, 1), cut.classifier_input(0, 1))
        # A capture of the double blocks only stops before any single block runs.
        single_calls = []
        model.single_transformer_blocks[0].register_forward_hook(lambda *a: single_calls.append(1))
    with AttentionCapture(model, layers=["transformer_blocks.0.attn", "transformer_blocks.1.attn"]) as capture:
        with capture.recording([[1], [3, 4]], text_len=8, latent_hw=(4, 4), stop_after_last=True) as maps:
            model(**inputs)
        assert single_calls == [] and len(maps.layers) == 2


@pytest.mark.parametrize("backend", ["sdpa", "native"])
def test_capture_backends_agree_with_the_explicit_reference(backend):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    latent = torch.randn(1, 16, 4, requires_grad=True)
    inputs = dict(encoder_hidden_states=torch.randn(1, 8, 32), pooled_projections=torch.randn(1, 32),
                  timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))
    weights = torch.randn(1, 2, 4, 16, 16)

    def maps_and_grad(capture):
        with capture:
            with capture.recording([[1], [3, 4]], text_len=8, latent_hw=(4, 4)) as maps:
                model(hidden_states=latent, **inputs)
            x = maps.classifier_input(0, 1)
            (grad,) = torch.autograd.grad((x * weights).sum(), latent)
        return x.detach(), grad

    got, got_grad = maps_and_grad(AttentionCapture(model, backend=backend))
    ref, ref_grad = maps_and_grad(ExplicitAttentionReference(model))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(L2SError, match="backend"):
        AttentionCapture(model, backend="magic")
