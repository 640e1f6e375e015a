"""l2s.ops."""

from .selected_softmax import selected_text_attention

__all__ = [
    "selected_text_attention",
]
