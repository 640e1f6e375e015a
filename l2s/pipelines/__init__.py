"""l2s.pipelines."""

from .base import (
    FluxSteeringPipeline,
    SDSteeringPipeline,
    SteeringPipeline,
    compile_classifier,
    load_diffusers_pipeline,
    wrap_pipeline,
)

__all__ = [
    "FluxSteeringPipeline",
    "SDSteeringPipeline",
    "SteeringPipeline",
    "compile_classifier",
    "load_diffusers_pipeline",
    "wrap_pipeline",
]
