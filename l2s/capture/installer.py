"""Installing map-recording attention processors on a FLUX transformer or an SD UNet.

What is captured: for every captured attention layer, the image-query × text-key attention
probabilities, softmaxed over the text keys only, averaged over the tokens of each object phrase
("group"), kept per head: one ``(B, heads, N_img, G)`` tensor per layer that stays in the autograd
graph, so a loss on the maps can be differentiated w.r.t. the latent.

Two ways to compute the same maps:

* :class:`AttentionCapture` (the fast path). The model's own attention keeps running through fused
  SDPA exactly like the stock diffusers processors. While :meth:`AttentionCapture.recording` is
  active, each layer also computes its maps with :func:`l2s.ops.selected_text_attention` (fused
  SDPA with a selector value matrix, or the native op), never keeping a
  ``heads × N_img × T`` probability tensor.
* :class:`ExplicitAttentionReference` (the published "reference mode"). Materialises the full
  attention logits, computes the model output with an explicit softmax and slices the maps out of
  the logits, as the official implementation does. Slow and memory-hungry; used to validate and
  benchmark the fast path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import FluxTransformer2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
)
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor

from l2s.errors import ClassifierMismatchError, L2SError, TokenizationError
from l2s.ops import ATTENTION_BACKENDS

from .flux import FluxCaptureProcessor, FluxExplicitReferenceProcessor
from .maps import CapturedMaps
from .recording import CaptureProcessorMixin, CaptureState, ForwardStopped, MapSpec, downsampled_grid
from .unet import CrossAttentionCaptureProcessor, CrossAttentionExplicitReferenceProcessor, unet_downsamplings

# How maps are computed: "sdpa" (the default) or "native" (see l2s.ops.selected_text_attention).
CAPTURE_BACKENDS = ATTENTION_BACKENDS

# Rank of each top-level module in the forward pass; names are sorted by (rank, block indices).
_STAGE_RANK = {
    "transformer_blocks": 0,  # FLUX double-stream blocks run first ...
    "single_transformer_blocks": 1,  # ... then the single-stream blocks.
    "down_blocks": 0,  # UNet: down, mid, up.
    "mid_block": 1,
    "up_blocks": 2,
}


def _execution_key(name: str) -> tuple:
    """Sort key giving the order in which a FLUX transformer or a UNet runs its attention layers."""
    parts = name.split(".")
    block_indices = tuple(int(part) for part in parts[1:] if part.isdigit())
    return _STAGE_RANK.get(parts[0], len(_STAGE_RANK)), block_indices, name


def _short(name: str) -> str:
    """A layer as a message names it: its block (``transformer_blocks.1``, not ``...1.attn``)."""
    return name.removesuffix(".attn2").removesuffix(".attn")


def _layer_span(names) -> str:
    """``5 attention layers (transformer_blocks.0 to single_transformer_blocks.2)``: a count and the
    first and last block in execution order, not a list (a FLUX.1 classifier reads 57)."""
    ordered = [_short(name) for name in sorted(names, key=_execution_key)]
    span = ordered[0] if len(ordered) == 1 else f"{ordered[0]} to {ordered[-1]}"
    return f"{len(ordered)} attention layer{'s' * (len(ordered) != 1)} ({span})"


def _normalise_groups(groups: Sequence[Sequence[int]], text_len: int) -> tuple[tuple[int, ...], ...]:
    """Validate token groups; drop repeated indices so each token counts once in its group's mean."""
    if text_len <= 0:
        raise TokenizationError(f"text_len must be positive, got {text_len}")
    if len(groups) == 0:
        raise TokenizationError("no token groups given: each object phrase needs at least one token")
    normalised = []
    for number, tokens in enumerate(groups):
        tokens = tuple(dict.fromkeys(int(token) for token in tokens))
        if not tokens:
            raise TokenizationError(f"token group {number} is empty")
        outside = [token for token in tokens if not 0 <= token < text_len]
        if outside:
            raise TokenizationError(
                f"token group {number} has positions {outside} outside the text (length {text_len})"
            )
        normalised.append(tokens)
    return tuple(normalised)


def map_spec(groups: Sequence[Sequence[int]], text_len: int, latent_hw: tuple[int, int]) -> MapSpec:
    """A validated recording request: token groups, text length and full-resolution token grid."""
    latent_hw = tuple(int(side) for side in latent_hw)
    if len(latent_hw) != 2 or min(latent_hw) <= 0:
        raise L2SError(f"latent_hw must be two positive sizes, got {latent_hw}")
    return MapSpec(_normalise_groups(groups, text_len), int(text_len), latent_hw)


class AttentionCapture:
    """Installs map-recording attention processors on a FLUX transformer or an SD UNet.

    FLUX: every ``FluxAttention`` (double blocks, then single blocks). UNet: every cross-attention
    (``attn2``) layer, in down, mid, up order. Outside :meth:`recording` the processors only do the
    model's own attention. Use as a context manager, or call :meth:`remove`.

    Example::

        with AttentionCapture(transformer) as capture:
            with capture.recording(groups=[[2], [6, 7]], text_len=512, latent_hw=(32, 32)) as maps:
                transformer(latents, ...)
            inputs = maps.classifier_input(subject=0, obj=1)   # (B, 2, 1368, 16, 16)
    """

    _flux_processor_cls: type[FluxCaptureProcessor] = FluxCaptureProcessor
    _unet_processor_cls: type[CrossAttentionCaptureProcessor] = CrossAttentionCaptureProcessor

    def __init__(
        self, model: FluxTransformer2DModel | UNet2DConditionModel, layers: Sequence[str] | None = None,
        backend: str = "sdpa",
    ) -> None:
        """Install capture processors on all capturable layers of ``model`` (or only ``layers``).

        Args:
            model: a diffusers ``FluxTransformer2DModel`` or ``UNet2DConditionModel``.
            layers: attention module names (``"transformer_blocks.0.attn"``; a trailing
                ``".processor"`` is accepted) to restrict the capture to.
            backend: "sdpa" (fused SDPA with the selector as value matrix; the default) or
                "native" (the ``l2s::selected_text_softmax`` op: Triton / CUDA / l2s_fast CPU).
                Both compute the same maps; which is faster depends on the device.
        """
        if backend not in CAPTURE_BACKENDS:
            raise L2SError(f"unknown capture backend {backend!r}; expected one of {CAPTURE_BACKENDS}")
        self.model = model
        self._state = CaptureState()
        self._state.backend = backend
        self._modules = self._select_layers(model, layers)
        processors = {
            name: self._make_processor(model, name, module.processor) for name, module in self._modules.items()
        }
        self._originals = {name: module.processor for name, module in self._modules.items()}
        self._downsamplings = {name: processor._downsamplings for name, processor in processors.items()}
        for name, module in self._modules.items():
            module.set_processor(processors[name])
        self._installed = True

    @classmethod
    def _select_layers(cls, model, layers: Sequence[str] | None) -> dict[str, torch.nn.Module]:
        """The capturable attention modules of ``model`` (or only ``layers``), in execution order."""
        candidates = cls._capturable_layers(model)
        if not candidates:   # before naming the layers a classifier reads: there is no span to name
            raise L2SError(f"{type(model).__name__} has no attention layers to capture")
        if layers is not None:
            wanted = [name.removesuffix(".processor") for name in layers]
            unknown = [name for name in wanted if name not in candidates]
            if unknown:
                raise ClassifierMismatchError(
                    f"the classifier reads {_layer_span(wanted)} but this model has {_layer_span(candidates)} and "
                    f"no {_short(unknown[0])}: use a classifier trained for this model")
            candidates = {name: candidates[name] for name in wanted}
        if not candidates:
            raise L2SError("no attention layers to capture were asked for (layers=[])")
        return {name: candidates[name] for name in sorted(candidates, key=_execution_key)}

    @classmethod
    def channels_of(cls, model, layers: Sequence[str] | None = None) -> int:
        """What :meth:`channels` of a capture on ``model`` (``layers``) would be, installing none: a
        check may run while another thread's steered step has its capture on the model."""
        modules = cls._select_layers(model, layers)
        for name, module in modules.items():
            if not isinstance(module.processor, CaptureProcessorMixin):   # a running call's: fine
                cls._check_replaceable(model, name, module.processor)
        return sum(module.heads for module in modules.values())

    @classmethod
    def _check_replaceable(cls, model, name: str, original) -> None:
        """An ``L2SError`` unless a capture can replace ``original`` (a stock diffusers processor)."""
        # Sliced attention (enable_attention_slicing) is the same attention, computed in slices; the
        # fused one (fuse_qkv_projections) the same projections, from concatenated copies of the weights.
        stock = (FluxAttnProcessor if isinstance(model, FluxTransformer2DModel)
                 else (AttnProcessor2_0, AttnProcessor, SlicedAttnProcessor, FusedAttnProcessor2_0))
        if not isinstance(original, stock):
            raise L2SError(cls._unsupported(name, original))

    def _make_processor(self, model, name: str, original) -> CaptureProcessorMixin:
        """The capture processor replacing ``original`` (a stock diffusers processor) on layer ``name``."""
        self._check_replaceable(model, name, original)
        if isinstance(model, FluxTransformer2DModel):
            return self._flux_processor_cls(name, self._state, original)
        return self._unet_processor_cls(name, self._state, unet_downsamplings(model, name),
                                        fused=isinstance(original, FusedAttnProcessor2_0))

    @staticmethod
    def _capturable_layers(model) -> dict[str, torch.nn.Module]:
        if isinstance(model, FluxTransformer2DModel):
            return {name: module for name, module in model.named_modules() if isinstance(module, FluxAttention)}
        if isinstance(model, UNet2DConditionModel):
            return {
                name: module
                for name, module in model.named_modules()
                if isinstance(module, Attention) and module.is_cross_attention and name.rsplit(".", 1)[-1] == "attn2"
            }
        raise L2SError(
            f"attention capture supports FluxTransformer2DModel and UNet2DConditionModel, not {type(model).__name__}"
        )

    @staticmethod
    def _unsupported(name: str, processor) -> str:
        if isinstance(processor, CaptureProcessorMixin):
            return f"layer {name} already has a capture installed: remove() it first"
        return f"layer {name} uses {type(processor).__name__}; only the stock diffusers processors can be replaced"

    # ---- lifecycle -------------------------------------------------------------------------

    def remove(self) -> None:
        """Put the original processors back (idempotent)."""
        if not self._installed:
            return
        for name, module in self._modules.items():
            module.set_processor(self._originals[name])
        self._installed = False

    def __enter__(self) -> AttentionCapture:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    # ---- layout ----------------------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """Captured attention module names in execution order."""
        return list(self._modules)

    def layer_layout(self, latent_hw: tuple[int, int]) -> list[tuple[str, int, tuple[int, int]]]:
        """``(name, heads, (h, w))`` per captured layer, for a full-resolution token grid ``latent_hw``.

        ``latent_hw`` is FLUX's packed token grid (``height // 16, width // 16``) or SD's latent size.
        """
        return [
            (name, module.heads, downsampled_grid(tuple(latent_hw), self._downsamplings[name]))
            for name, module in self._modules.items()
        ]

    def channels(self) -> int:
        """Classifier channels per object: the sum of heads over the captured layers."""
        return sum(module.heads for module in self._modules.values())

    # ---- recording -------------------------------------------------------------------------

    @contextmanager
    def recording(
        self, groups: Sequence[Sequence[int]], text_len: int, latent_hw: tuple[int, int],
        stop_after_last: bool = False,
    ) -> Iterator[CapturedMaps]:
        """Record maps for ``groups`` during the forward passes run inside this block.

        Args:
            groups: token positions of each object phrase in the text sequence (its maps are the
                mean over these tokens).
            text_len: length of the text sequence the model sees (FLUX: padded T5 length; SD: 77).
            latent_hw: FLUX's packed token grid (``latent_h // 2, latent_w // 2``) or SD's latent
                ``(h, w)``; each UNet layer's grid follows from its downsampling.

        Yields:
            The :class:`CapturedMaps` being filled; it keeps the latest forward pass's maps (a new
            forward replaces them) and stays usable after the block ends. The maps keep their
            autograd graph; with gradient checkpointing, run backward before the next forward
            and before :meth:`remove` (the recompute must run the same processors).

        With ``stop_after_last`` the model's forward is cut short right after the last captured
        layer has recorded its maps (steering needs nothing later: the output head is not on the
        gradient path of the maps); the block then ends normally and the model call returns
        nothing.  Not for use with gradient checkpointing.
        """
        with self.recording_spec(map_spec(groups, text_len, latent_hw), stop_after_last) as captured:
            yield captured

    @contextmanager
    def recording_spec(self, spec: MapSpec, stop_after_last: bool = False) -> Iterator[CapturedMaps]:
        """:meth:`recording` for a spec made once by :func:`map_spec` (its selectors are built once
        and reused by every recording that shares it, e.g. all iterations of a steered prompt)."""
        if not self._installed:
            raise L2SError("this AttentionCapture was removed; create a new one")
        if self._state.spec is not None:
            raise L2SError("recording() is already active on this capture")
        captured = CapturedMaps(spec.groups, spec.text_len)
        self._state.spec, self._state.captured = spec, captured
        self._state.stop_after = self.layer_names[-1] if stop_after_last else None
        try:
            yield captured
        except ForwardStopped:
            pass
        finally:
            self._state.spec, self._state.captured, self._state.stop_after = None, None, None


class ExplicitAttentionReference(AttentionCapture):
    """The published "reference mode" capture: explicit attention everywhere it is installed.

    Same API and same maps as :class:`AttentionCapture`, but every captured layer computes its
    output with an explicit softmax over materialised logits (also when not recording), and the maps
    are sliced from those logits (FLUX: ``logits[:, :, T:, :T]`` softmaxed over text) and averaged by
    indexing. Used to validate and benchmark the fast path.
    """

    _flux_processor_cls = FluxExplicitReferenceProcessor
    _unet_processor_cls = CrossAttentionExplicitReferenceProcessor
