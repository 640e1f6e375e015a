"""diffusers custom pipeline: relation-steered FLUX (needs the ``l2s`` package installed).

``DiffusionPipeline.from_pretrained(flux_dir, custom_pipeline=l2s.pipelines.native.custom_pipeline_file("flux"),
trust_remote_code=True, classifier=RelationClassifier.load(...))``.
"""
from l2s.pipelines.native.flux import FluxRelationSteeringPipeline

__all__ = ["FluxRelationSteeringPipeline"]
