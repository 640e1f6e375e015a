"""FLUX's steered forward against the capture on the stock forward: same maps, same gradients,
only what the maps need computed, and the stock forward kept wherever it cannot stand in."""
from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

from l2s.capture import (
    AttentionCapture,
    FluxSteeredForward,
    map_spec,
    steered_forward_unsupported,
)
from l2s.capture.flux_blocks import gelu
from l2s.engines import example_flux_inputs
from l2s.errors import L2SError

GRID, TEXT_LEN, GROUPS = (4, 6), 10, [[1], [3, 4], [7]]   # non-square grid, a two-token object
# Float rounding aside (the same operations in the same order: bit for bit on this CPU).
SAME = {"rtol": 1e-6, "atol": 1e-7}


def tiny_flux(guidance_embeds: bool) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                   guidance_embeds=guidance_embeds)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=[False, True], ids=["schnell-like", "dev-like"])
def model_and_inputs(request):
    model = tiny_flux(request.param)
    return model, example_flux_inputs(model, batch_size=2, latent_grid=GRID, text_tokens=TEXT_LEN)


def weighted_sum(maps: list[torch.Tensor]) -> torch.Tensor:
    weights = torch.Generator().manual_seed(3)
    return sum((m * torch.rand(m.shape, generator=weights)).sum() for m in maps)


def captured(model, inputs, layers):
    z = inputs["hidden_states"].clone().requires_grad_(True)
    with AttentionCapture(model, layers=layers) as capture, \
            capture.recording(GROUPS, TEXT_LEN, GRID, stop_after_last=True) as maps:
        model(**{**inputs, "hidden_states": z})
    layer_maps = [layer.maps for layer in maps.layers]
    return layer_maps, torch.autograd.grad(weighted_sum(layer_maps), z)[0]


def steered(model, inputs, layers):
    forward = FluxSteeredForward(model, layers)
    selector = map_spec(GROUPS, TEXT_LEN, GRID).selector(16, torch.device("cpu"), torch.float32)
    z = inputs["hidden_states"].clone().requires_grad_(True)
    layer_maps = [m[..., : len(GROUPS)] for m in forward.maps(z, forward.constants(inputs), selector)]
    return layer_maps, torch.autograd.grad(weighted_sum(layer_maps), z)[0]


@pytest.mark.parametrize("layers", [
    None,                                                             # all four, the last a single block
    ["transformer_blocks.0.attn"],                                    # first block only: maps only
    ["transformer_blocks.0.attn", "transformer_blocks.1.attn", "single_transformer_blocks.0.attn"],
    ["transformer_blocks.1.attn", "single_transformer_blocks.1.attn"],   # layers skipped in between
])
def test_steered_forward_gives_the_captures_maps_and_latent_gradient(model_and_inputs, layers):
    model, inputs = model_and_inputs
    expected_maps, expected_grad = captured(model, inputs, layers)
    maps, grad = steered(model, inputs, layers)
    assert len(maps) == len(expected_maps) == (len(layers) if layers else 4)
    for got, expected in zip(maps, expected_maps):
        torch.testing.assert_close(got, expected, **SAME)
    torch.testing.assert_close(grad, expected_grad, **SAME)
    assert grad.abs().sum() > 0


def test_only_what_the_maps_need_runs(model_and_inputs):
    """Step constants are made once (not per pass); the last captured layer projects no values and
    runs no MLP; nothing after it runs."""
    model, inputs = model_and_inputs
    forward = FluxSteeredForward(model, ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"])
    constants = forward.constants(inputs)
    last, after = model.single_transformer_blocks[0], model.single_transformer_blocks[1]
    watched = {"time embedding": model.time_text_embed, "text embedding": model.context_embedder,
               "last values": last.attn.to_v, "last MLP": last.proj_mlp, "next block": after.attn.to_q,
               "output head": model.proj_out, "latent embedding": model.x_embedder}
    calls = {name: 0 for name in watched}
    hooks = [module.register_forward_pre_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
             for name, module in watched.items()]
    try:
        selector = map_spec(GROUPS, TEXT_LEN, GRID).selector(16, torch.device("cpu"), torch.float32)
        for _ in range(3):
            forward.maps(inputs["hidden_states"], constants, selector)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {name: 3 if name == "latent embedding" else 0 for name in watched}


def test_the_stock_forward_is_kept_where_the_steered_one_cannot_stand_in():
    from diffusers.models.attention_processor import AttnProcessor

    from l2s.demo import tiny_sd_pipeline

    model = tiny_flux(False)
    assert steered_forward_unsupported(model) is None
    handle = model.register_forward_pre_hook(lambda *a: None)
    assert "hooked" in steered_forward_unsupported(model)
    handle.remove()
    model.gradient_checkpointing = True
    assert "checkpointing" in steered_forward_unsupported(model)
    model.gradient_checkpointing = False
    model.transformer_blocks[1].attn.set_processor(AttnProcessor())
    assert "processor" in steered_forward_unsupported(model)
    with pytest.raises(L2SError, match="cannot run this transformer"):
        FluxSteeredForward(model)
    assert "not a FLUX transformer" in steered_forward_unsupported(tiny_sd_pipeline(seed=0).unet)


def with_scaled_fused_copies(model: FluxTransformer2DModel) -> FluxTransformer2DModel:
    """``model`` fused (``fuse_qkv_projections``) with fused copies that no longer equal the separate
    layers, so a forward shows which of them it projected through."""
    model.fuse_qkv_projections()
    with torch.no_grad():
        for module in model.modules():
            for name in ("to_qkv", "to_added_qkv"):
                if hasattr(module, name):
                    getattr(module, name).weight.mul_(1.5)
    return model


def unfuse(model: FluxTransformer2DModel, how: str) -> None:
    """diffusers' unfuse (drops the copies), or only the flag the stock processor reads (copies kept)."""
    if how == "diffusers":
        model.unfuse_qkv_projections()
        return
    for module in model.modules():
        if hasattr(module, "fused_projections"):
            module.fused_projections = False


@pytest.mark.parametrize("unfused_by", ["diffusers", "flag only"])
@pytest.mark.parametrize("layers", [
    None,                                                             # the last a single block: maps only
    ["transformer_blocks.0.attn"],                                    # a double block's maps only
    ["transformer_blocks.1.attn", "single_transformer_blocks.1.attn"],
])
def test_fused_projections_project_as_the_stock_processor_also_after_unfusing(model_and_inputs, layers, unfused_by):
    """Exactly the stock forward's maps and gradient, fused or not (measured: equal bit for bit)."""
    model, inputs = model_and_inputs
    unfused_maps, _ = captured(model, inputs, layers)
    fused = with_scaled_fused_copies(tiny_flux(model.config.guidance_embeds))
    assert steered_forward_unsupported(fused) is None
    expected_maps, expected_grad = captured(fused, inputs, layers)
    assert not torch.allclose(expected_maps[0], unfused_maps[0])      # the stock forward read the fused copies
    maps, grad = steered(fused, inputs, layers)
    for got, expected in zip(maps, expected_maps):
        torch.testing.assert_close(got, expected, **SAME)
    torch.testing.assert_close(grad, expected_grad, **SAME)
    unfuse(fused, unfused_by)                                          # the separate layers again
    maps, grad = steered(fused, inputs, layers)
    expected_maps, expected_grad = captured(fused, inputs, layers)
    for got, expected, unfused in zip(maps, expected_maps, unfused_maps):
        torch.testing.assert_close(got, expected, **SAME)
        torch.testing.assert_close(got, unfused, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, **SAME)


def test_gelu_is_the_stock_one_eager_and_its_sigmoid_form_compiled_on_the_cpu():
    """Eager: ``F.gelu`` bit for bit. Compiled: the graph holds a sigmoid and no GELU, and its values
    and gradients are the stock tanh-GELU's, at both tails and around zero."""
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.logspace(-30, 0, 61), -torch.logspace(-30, 0, 61)])
    assert torch.equal(gelu(x, "tanh"), torch.nn.functional.gelu(x, approximate="tanh"))
    assert torch.equal(gelu(x, "none"), torch.nn.functional.gelu(x))
    seen = []

    def recording(graph_module, example_inputs):
        seen.extend(str(node.target) for node in graph_module.graph.nodes)
        return graph_module.forward

    compiled = torch.compile(lambda t: gelu(t, "tanh"), backend=recording, fullgraph=True)
    got_input, stock_input = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = compiled(got_input)
    assert any("sigmoid" in target for target in seen) and not any("gelu" in target for target in seen)
    stock = torch.nn.functional.gelu(stock_input, approximate="tanh")
    # atol 1e-6: left of about -5 the stock 1 + tanh(u) rounds to 0 where x * sigmoid(2u) keeps ~1e-7.
    torch.testing.assert_close(got, stock, rtol=1e-6, atol=1e-6)
    got.sum().backward()
    stock.sum().backward()
    torch.testing.assert_close(got_input.grad, stock_input.grad, rtol=1e-5, atol=1e-6)


def test_hooks_on_a_feed_forward_or_its_gelu_still_run(model_and_inputs):
    """The steered blocks call the GELU themselves; a hooked FeedForward, GELU module or single-block
    activation is called as the stock block calls it, so its hooks run (and may change the output)."""
    model, inputs = model_and_inputs
    expected_maps, _ = steered(model, inputs, None)
    calls = []

    def doubled(module, args, output):
        calls.append(type(module).__name__)
        return output * 2

    handles = [model.transformer_blocks[0].ff.register_forward_hook(doubled),
               model.transformer_blocks[0].ff_context.net[0].register_forward_hook(doubled),
               model.single_transformer_blocks[0].act_mlp.register_forward_hook(doubled)]
    try:
        maps, _ = steered(model, inputs, None)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(calls) == ["FeedForward", "GELU", "GELU"]
    assert not torch.allclose(maps[-1], expected_maps[-1])      # the hooks' doubling reached the maps


def test_backward_and_global_hooks_on_a_gelu_still_run(model_and_inputs):
    """Not only forward hooks: a GELU with a backward hook, or any module while a global module hook
    is registered, is called as the stock block calls it, so those hooks run too."""
    model, inputs = model_and_inputs
    calls = []
    handles = [model.transformer_blocks[0].ff.net[0].register_full_backward_hook(
                   lambda module, grad_in, grad_out: calls.append("backward " + type(module).__name__)),
               model.single_transformer_blocks[0].act_mlp.register_full_backward_hook(
                   lambda module, grad_in, grad_out: calls.append("backward " + type(module).__name__))]
    try:
        steered(model, inputs, None)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(calls) == ["backward GELU", "backward GELU"]
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: seen.append(type(module).__name__))
    try:
        steered(model, inputs, None)
    finally:
        handle.remove()
    # two per double block, one per single block but the last, which computes only its maps
    assert seen.count("GELU") == 2 * len(model.transformer_blocks) + len(model.single_transformer_blocks) - 1


class _Doubled(torch.nn.Module):
    """A feed-forward of another type than diffusers' (no ``net``): it doubles its inner one's output."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2


def test_a_replaced_feed_forward_or_gelu_forward_is_called_as_the_stock_block_calls_it(model_and_inputs):
    """A block's ``ff`` of another type, or a GELU whose ``forward`` was replaced on the instance (as
    diffusers' hooks do), is called, not bypassed: its change reaches the maps."""
    model, inputs = model_and_inputs
    expected_maps, _ = steered(model, inputs, None)
    block, single = model.transformer_blocks[0], model.single_transformer_blocks[0]
    stock_ff = block.ff
    try:
        block.ff = _Doubled(stock_ff)
        replaced_maps, _ = steered(model, inputs, None)
    finally:
        block.ff = stock_ff
    assert not torch.allclose(replaced_maps[-1], expected_maps[-1])
    for module in (block.ff_context.net[0], single.act_mlp):
        stock_forward = module.forward
        module.forward = lambda x, stock_forward=stock_forward: stock_forward(x) * 2
        try:
            maps, _ = steered(model, inputs, None)
        finally:
            del module.forward
        assert not torch.allclose(maps[-1], expected_maps[-1]), type(module)


def test_the_compiled_steered_forward_of_stock_blocks_has_no_gelu_left(model_and_inputs):
    """The stock FeedForward, GELU and single-block activation are bypassed: compiled on the CPU, the
    steered forward's graph holds the sigmoid form of every GELU and no GELU."""
    model, inputs = model_and_inputs
    forward = FluxSteeredForward(model, None)
    selector = map_spec(GROUPS, TEXT_LEN, GRID).selector(16, torch.device("cpu"), torch.float32)
    seen = []

    def recording(graph_module, example_inputs):
        seen.extend(str(node.target) for node in graph_module.graph.nodes)
        return graph_module.forward

    torch._dynamo.reset()
    maps = torch.compile(forward.maps, backend=recording, fullgraph=True)
    maps(inputs["hidden_states"].clone().requires_grad_(True), forward.constants(inputs), selector)
    assert not any("gelu" in target for target in seen)
    # two per double block, one per single block but the last, which computes only its maps
    assert sum("sigmoid" in target for target in seen) == 2 * len(model.transformer_blocks) + \
        len(model.single_transformer_blocks) - 1


def test_gelu_under_export_is_the_stock_call_and_compiled_bf16_computes_in_float32():
    """An export may target another device: it keeps ``F.gelu``. Compiled in bf16, the sigmoid form
    runs in float32 and casts back once, so it rounds as the stock bf16 GELU does (not per term)."""
    class Gelu(torch.nn.Module):
        def forward(self, x):
            return gelu(x, "tanh")

    exported = torch.export.export(Gelu(), (torch.randn(4, 8),))
    targets = [str(node.target) for node in exported.graph.nodes]
    assert any("gelu" in t for t in targets) and not any("sigmoid" in t for t in targets)
    x = torch.linspace(-6, 6, 4001).to(torch.bfloat16)
    got = torch.compile(lambda t: gelu(t, "tanh"), backend="aot_eager", fullgraph=True)(x)
    exact = torch.nn.functional.gelu(x.double(), approximate="tanh")
    stock = torch.nn.functional.gelu(x, approximate="tanh")
    assert got.dtype == torch.bfloat16
    assert (got.double() - exact).abs().max() <= (stock.double() - exact).abs().max()
