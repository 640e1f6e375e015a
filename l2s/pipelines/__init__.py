"""l2s.pipelines: steered generation on diffusers pipelines, one module per model family.

:mod:`.base` holds the model-independent data path, :mod:`.flux` and :mod:`.stable_diffusion` the
families' denoising loops (:mod:`.flux_sampling`: FLUX's timesteps and decode, which GRPO and inversion
share), :mod:`.loading` local folders and :func:`wrap_pipeline`; :mod:`.native`
the same steering as diffusers pipelines (``FluxRelationSteeringPipeline.from_pipe(pipe, classifier=...)``).
"""

import l2s.quiet  # noqa: F401  (drops transformers' torchvision notice before diffusers loads)
from l2s.steer import compile_classifier

from .base import SteeringPipeline
from .flux import FluxSteeringPipeline  # noqa: I001 (registers with wrap_pipeline before SD)
from .stable_diffusion import SDSteeringPipeline
from .loading import load_diffusers_pipeline, wrap_pipeline
from .results import SteeringResult
from .native import FluxRelationSteeringPipeline, StableDiffusionRelationSteeringPipeline, custom_pipeline_file

__all__ = [
    "FluxRelationSteeringPipeline",
    "FluxSteeringPipeline",
    "SDSteeringPipeline",
    "StableDiffusionRelationSteeringPipeline",
    "SteeringPipeline",
    "SteeringResult",
    "compile_classifier",
    "custom_pipeline_file",
    "load_diffusers_pipeline",
    "wrap_pipeline",
]
