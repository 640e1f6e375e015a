"""l2s.capture."""

from .installer import (
    AttentionCapture,
    CapturedMaps,
    ExplicitAttentionReference,
    resize_maps_for_classifier,
    selected_text_attention,
    token_group_selector,
)

__all__ = [
    "AttentionCapture",
    "CapturedMaps",
    "ExplicitAttentionReference",
    "resize_maps_for_classifier",
    "selected_text_attention",
    "token_group_selector",
]
