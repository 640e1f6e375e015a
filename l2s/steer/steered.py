"""The fast modes on FLUX: log p(target) of a latent through l2s's steered forward.

:class:`SteeredEvaluation` runs :class:`~l2s.capture.FluxSteeredForward` (the step's constants
made on the first iteration of a step and kept for the others), the classifier on the relation's
pair of group maps, and ``log_softmax`` at its class: one plain function of tensors, which the
compiled modes compile whole, forward and backward (:class:`~.compiled.CompiledSteering`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from l2s.capture import (
    FluxSteeredForward,
    MapSpec,
    StepConstants,
    pair_input,
    steered_forward_unsupported,
)
from l2s.errors import L2SError

from .compiled import CompiledSteering
from .modes import ExecutionMode, differentiable_sdpa
from .refine import LogProbFn


def _evaluation(forward: FluxSteeredForward, classify: Callable, map_size: int) -> Callable:
    def evaluate(z: torch.Tensor, constants: StepConstants, selector: torch.Tensor, pair: torch.Tensor,
                 classes: torch.Tensor, steps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        maps = forward.maps(z, constants, selector)
        logits = classify(pair_input(maps, grid, pair, map_size), steps).float()
        return torch.log_softmax(logits, dim=-1).gather(1, classes.view(-1, 1)).squeeze(1)

    return evaluate


class SteeredEvaluation:
    """log p(target) through the steered forward of ``denoiser``'s ``layers``, classified by
    ``classify`` (maps, steps) -> logits; compiled whole when ``mode.compile_steering``."""

    def __init__(self, denoiser: torch.nn.Module, layers: Sequence[str] | None, backend: str,
                 classify: Callable, map_size: int, mode: ExecutionMode) -> None:
        self.backend = backend
        self.forward = FluxSteeredForward(denoiser, layers, backend)
        evaluate = _evaluation(self.forward, classify, map_size)
        self.compiled = None
        if mode.compile_steering:
            self.compiled = CompiledSteering(evaluate, mode.compile_backend, mode.compile_mode)
        self._evaluate = self.compiled or evaluate

    @staticmethod
    def unsupported(denoiser: torch.nn.Module, inputs: Callable | None) -> str | None:
        """Why the steered forward cannot serve this call (None: it can)."""
        if inputs is None:
            return "the pipeline passed no transformer inputs for it"
        return steered_forward_unsupported(denoiser)

    @property
    def compile_seconds(self) -> float:
        return self.compiled.cold_seconds if self.compiled is not None else 0.0

    def log_prob_fn(self, prepared, step_index: int, inputs: Callable[[torch.Tensor], dict]) -> LogProbFn:
        """``log_prob(z, relation)`` for one denoising step; ``inputs(z)``: the transformer's keyword
        arguments (read once, on the first call: only the latent changes within a step)."""
        transformer = self.forward.transformer
        selector = prepared.spec.selector(transformer.config.attention_head_dim, prepared.device,
                                          transformer.x_embedder.weight.dtype, self.backend)
        constants: list[StepConstants] = []

        def log_prob(z: torch.Tensor, relation) -> torch.Tensor:
            if not constants:
                constants.append(self._constants(inputs(z), prepared.spec, z))
            pair, classes = prepared.relation(relation, z.shape[0])
            with differentiable_sdpa(z.device):
                return self._evaluate(z, constants[0], selector, pair, classes,
                                      prepared.steps(step_index, z.shape[0]), prepared.spec.latent_hw)

        return log_prob

    def _constants(self, inputs: dict, spec: MapSpec, z: torch.Tensor) -> StepConstants:
        constants = self.forward.constants(inputs)
        if constants.text.shape[1] != spec.text_len:
            raise L2SError(f"the model got {constants.text.shape[1]} text tokens but the maps were asked "
                           f"for text_len={spec.text_len}")
        height, width = spec.latent_hw
        if z.shape[1] != height * width:
            raise L2SError(f"{z.shape[1]} image tokens do not match the {height}x{width} grid latent_hw")
        return constants
