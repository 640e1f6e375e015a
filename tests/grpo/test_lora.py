"""The LoRA adapter: where it sits, that it starts as the base model, save and load onto a pipeline."""
import pytest
import torch

from l2s.errors import ModelLoadError
from l2s.grpo import adapter_dir, add_lora, apply_lora

from .conftest import make_tiny_pipe


def _forward(transformer, pipe):
    emb, pooled, text_ids = pipe.encode_prompt(prompt="a red circle", prompt_2=None, max_sequence_length=32)
    generator = torch.Generator().manual_seed(0)
    channels = pipe.transformer.config.in_channels // 4
    latents, image_ids = pipe.prepare_latents(4, channels, 16, 16, emb.dtype, "cpu", generator)
    with torch.no_grad():
        return transformer(hidden_states=latents, timestep=torch.full((4,), 0.7), guidance=None,
                           pooled_projections=pooled.expand(4, -1), encoder_hidden_states=emb.expand(4, -1, -1),
                           txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]


def test_the_adapter_covers_attention_and_feed_forward_of_both_block_kinds(tiny_pipe):
    model = add_lora(tiny_pipe.transformer, rank=4, alpha=8)
    wrapped = {name.removeprefix("base_model.model.").removesuffix(".lora_A.default")
               for name, _ in model.named_modules() if name.endswith("lora_A.default")}
    expected = {f"transformer_blocks.0.{m}" for m in (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
        "ff_context.net.2")}
    expected |= {f"single_transformer_blocks.0.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp",
                                                                "proj_out")}
    assert wrapped == expected        # embeddings, norms and the final projection stay as they are
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_a_fresh_adapter_is_the_base_model_and_a_saved_one_loads_merged(tiny_pipe, tmp_path):
    base_out = _forward(tiny_pipe.transformer, tiny_pipe)
    model = add_lora(tiny_pipe.transformer, rank=4, alpha=8)
    assert torch.equal(_forward(model, tiny_pipe), base_out)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    tuned_out = _forward(model, tiny_pipe)
    assert not torch.allclose(tuned_out, base_out)
    model.save_pretrained(str(tmp_path / "run" / "adapter"))
    size = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").stat().st_size
    assert size < 200_000
    fresh = make_tiny_pipe()
    apply_lora(fresh, tmp_path / "run")          # a run folder resolves to its adapter/
    assert type(fresh.transformer).__name__ == "FluxTransformer2DModel"   # merged: plain diffusers again
    torch.testing.assert_close(_forward(fresh.transformer, fresh), tuned_out, rtol=1e-5, atol=1e-5)


def test_missing_or_foreign_adapters_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="adapter_config.json missing"):
        adapter_dir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no LoRA adapter at \S+ \(no such folder\)"):
        adapter_dir(tmp_path / "nope")
    other = add_lora(make_tiny_pipe().transformer, rank=4, alpha=8)
    other.save_pretrained(str(tmp_path / "a"))
    from dataclasses import replace

    from l2s.shapes import TINY_CONFIG, build_shapes_pipeline

    wider = build_shapes_pipeline(replace(TINY_CONFIG, image_size=16, head_dim=24, rope_axes=(4, 10, 10)))
    with pytest.raises(ModelLoadError, match=r"does not fit this model \(size mismatch for .* more like it\)") as refused:
        apply_lora(wider, tmp_path / "a")
    assert "\n" not in str(refused.value)                  # one line, not one per tensor
