"""l2s.classifier."""

from .model import (
    ClassifierConfig,
    RelationClassifier,
    convert_published_checkpoint,
    load_published_checkpoint,
    preset,
    step_index_for,
)

__all__ = [
    "ClassifierConfig",
    "RelationClassifier",
    "convert_published_checkpoint",
    "load_published_checkpoint",
    "preset",
    "step_index_for",
]
