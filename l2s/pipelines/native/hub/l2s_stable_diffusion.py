"""diffusers custom pipeline: relation-steered Stable Diffusion (needs the ``l2s`` package installed).

``DiffusionPipeline.from_pretrained(sd_dir,
custom_pipeline=l2s.pipelines.native.custom_pipeline_file("stable-diffusion"),
trust_remote_code=True, classifier=RelationClassifier.load(...))``.
"""
from l2s.pipelines.native.stable_diffusion import (
    StableDiffusionRelationSteeringPipeline,
)

__all__ = ["StableDiffusionRelationSteeringPipeline"]
