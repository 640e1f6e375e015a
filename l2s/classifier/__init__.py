"""l2s.classifier: the relation classifier, its configuration and its checkpoint formats."""

from .config import ClassifierConfig, preset, step_index_for
from .layouts import first_blocks, flux_layout, layout_channels, layout_channels_count
from .model import RelationClassifier, convert_published_checkpoint, load_published_checkpoint

__all__ = [
    "ClassifierConfig",
    "RelationClassifier",
    "convert_published_checkpoint",
    "first_blocks",
    "flux_layout",
    "layout_channels",
    "layout_channels_count",
    "load_published_checkpoint",
    "preset",
    "step_index_for",
]
