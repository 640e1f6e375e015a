"""Relation steering as diffusers pipelines: the stock pipeline's call, steered.

:class:`FluxRelationSteeringPipeline` is a ``FluxPipeline`` and
:class:`StableDiffusionRelationSteeringPipeline` a ``StableDiffusionPipeline``: build one with
``from_pipe`` on a loaded pipeline, or load it as a diffusers custom pipeline from
:func:`custom_pipeline_file`;
:mod:`.steering` holds what every family shares, :mod:`.plans` what each prompt steers.
"""
from pathlib import Path

from .flux import FluxRelationSteeringOutput, FluxRelationSteeringPipeline
from .plans import PromptSteering, parsed_from_relations
from .stable_diffusion import (
    StableDiffusionRelationSteeringOutput,
    StableDiffusionRelationSteeringPipeline,
)

_HUB = Path(__file__).resolve().parent / "hub"
CUSTOM_PIPELINE_FILES = {"flux": "l2s_flux.py", "stable-diffusion": "l2s_stable_diffusion.py"}


def custom_pipeline_file(family: str = "flux") -> str:
    """The file to give diffusers as ``custom_pipeline=`` (with ``trust_remote_code=True``)."""
    if family not in CUSTOM_PIPELINE_FILES:
        raise ValueError(f"no custom pipeline file for {family!r}; one of {', '.join(CUSTOM_PIPELINE_FILES)}")
    return str(_HUB / CUSTOM_PIPELINE_FILES[family])


__all__ = [
    "CUSTOM_PIPELINE_FILES",
    "FluxRelationSteeringOutput",
    "FluxRelationSteeringPipeline",
    "PromptSteering",
    "StableDiffusionRelationSteeringOutput",
    "StableDiffusionRelationSteeringPipeline",
    "custom_pipeline_file",
    "parsed_from_relations",
]
