"""FLUX's steered forward: a latent's maps at the captured layers, and nothing else.

The fast steering modes run this in place of the stock ``FluxTransformer2DModel`` call with
capture processors. It computes what the stock forward computes up to the last captured layer
(same modules, same operations in the same order: the capture's maps and gradients, bit for bit
in eager mode on CPU), except that

* what does not depend on the latent within one denoising step (the timestep / guidance / pooled
  text embedding and every block's adaLN modulation made from it, the embedded text, the rotary
  embedding) is made once per step (:meth:`FluxSteeredForward.constants`);
* the last captured layer computes only its image queries and text keys (all its maps read);
* it is a plain function of tensors (no processor swap, no exception to stop the forward, no
  per-layer bookkeeping), so ``torch.compile`` traces a whole iteration as one graph.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import (
    FluxAttention,
    FluxAttnProcessor,
)

from l2s.errors import L2SError

from .flux_blocks import double_block, modulations, single_block
from .installer import AttentionCapture


@dataclass(frozen=True)
class StepConstants:
    """Everything of a FLUX forward that only the step's conditioning decides (not the latent)."""

    text: torch.Tensor                                # embedded text (B, T, width)
    rope: tuple[torch.Tensor, torch.Tensor]           # rotary cos, sin over text + image positions
    double: tuple[tuple[torch.Tensor, ...], ...]      # per double block run: 6 image + 6 text modulations
    single: tuple[tuple[torch.Tensor, ...], ...]      # per single block run: 3 modulations


def steered_forward_unsupported(transformer: torch.nn.Module) -> str | None:
    """Why :class:`FluxSteeredForward` cannot stand in for ``transformer``'s forward (None: it can).

    Anything that changes what the stock forward does (hooks on it, offloading, a non-stock
    attention processor, gradient checkpointing) keeps the stock forward. Fused projections do not:
    the steered blocks project as the stock processor does (:mod:`.flux_blocks`).
    """
    if not isinstance(transformer, FluxTransformer2DModel):
        return f"{type(transformer).__name__} is not a FLUX transformer"
    registry = getattr(transformer, "_diffusers_hook", None)       # made empty by ``cache_context``
    if getattr(transformer, "_hf_hook", None) is not None or (registry is not None and registry.hooks):
        return "the transformer has offloading or caching hooks"
    if transformer._forward_hooks or transformer._forward_pre_hooks or "forward" in transformer.__dict__:
        return "the transformer's forward is hooked or replaced"
    if transformer.gradient_checkpointing:
        return "gradient checkpointing is on"
    for module in transformer.modules():
        if isinstance(module, FluxAttention):
            if type(module.processor) is not FluxAttnProcessor:
                return f"an attention layer runs {type(module.processor).__name__}, not the stock processor"
    return None


class FluxSteeredForward:
    """Maps of a FLUX transformer's captured ``layers`` (default all) for a latent; see the module doc.

    ``backend`` computes the maps as :class:`~l2s.capture.AttentionCapture`'s does ("sdpa" or
    "native").
    """

    def __init__(self, transformer: FluxTransformer2DModel, layers: Sequence[str] | None = None,
                 backend: str = "sdpa") -> None:
        reason = steered_forward_unsupported(transformer)
        if reason is not None:
            raise L2SError(f"the steered forward cannot run this transformer: {reason}")
        self.transformer = transformer
        self.backend = backend
        self.layer_names = list(AttentionCapture._select_layers(transformer, layers))  # execution order
        double = len(transformer.transformer_blocks)
        order = [f"transformer_blocks.{i}.attn" for i in range(double)]
        order += [f"single_transformer_blocks.{i}.attn" for i in range(len(transformer.single_transformer_blocks))]
        self._captured = frozenset(order.index(name) for name in self.layer_names)
        self._last = max(self._captured)
        self._double_run = min(self._last + 1, double)      # double blocks run (the last may be maps only)
        self._single_run = max(0, self._last + 1 - double)

    @torch.no_grad()
    def constants(self, inputs: dict) -> StepConstants:
        """The :class:`StepConstants` of the transformer's keyword arguments ``inputs`` (its latent,
        ``hidden_states``, is not read), exactly as the stock forward computes them."""
        transformer = self.transformer
        dtype = transformer.x_embedder.weight.dtype
        timestep = inputs["timestep"].to(dtype) * 1000
        guidance, pooled = inputs.get("guidance"), inputs["pooled_projections"]
        if guidance is None:
            temb = transformer.time_text_embed(timestep, pooled)
        else:
            temb = transformer.time_text_embed(timestep, guidance.to(dtype) * 1000, pooled)
        text_ids, image_ids = inputs["txt_ids"], inputs["img_ids"]
        text_ids = text_ids[0] if text_ids.ndim == 3 else text_ids
        image_ids = image_ids[0] if image_ids.ndim == 3 else image_ids
        double = tuple(modulations(block.norm1, temb, 6) + modulations(block.norm1_context, temb, 6)
                       for block in transformer.transformer_blocks[: self._double_run])
        single = tuple(modulations(block.norm, temb, 3)
                       for block in transformer.single_transformer_blocks[: self._single_run])
        return StepConstants(transformer.context_embedder(inputs["encoder_hidden_states"]),
                             transformer.pos_embed(torch.cat((text_ids, image_ids), dim=0)), double, single)

    def maps(self, z: torch.Tensor, constants: StepConstants, selector: torch.Tensor) -> list[torch.Tensor]:
        """``(B, heads, N_img, W)`` maps of every captured layer, in execution order, for the packed
        latent ``z``; ``selector`` ``(T, W)`` as :meth:`~l2s.capture.MapSpec.selector` makes it
        (columns past the token groups are zero padding, kept: the group count is data)."""
        transformer, rope, last = self.transformer, constants.rope, self._last
        hidden, text = transformer.x_embedder(z), constants.text
        text_len, found = text.shape[1], []
        for index, block in enumerate(transformer.transformer_blocks[: self._double_run]):
            capture = (selector, self.backend) if index in self._captured else None
            text, hidden, maps = double_block(block, hidden, text, constants.double[index], rope, capture,
                                              maps_only=index == last)
            if maps is not None:
                found.append(maps)
        if not self._single_run:
            return found
        joint, offset = torch.cat([text, hidden], dim=1), self._double_run
        for index, block in enumerate(transformer.single_transformer_blocks[: self._single_run]):
            capture = (selector, self.backend) if offset + index in self._captured else None
            joint, maps = single_block(block, joint, constants.single[index], rope, text_len, capture,
                                       maps_only=offset + index == last)
            if maps is not None:
                found.append(maps)
        return found
