"""l2s.capture: differentiable capture of token-selected cross-attention maps (FLUX, SD UNets).

:class:`AttentionCapture` installs map-recording processors (:mod:`.flux`, :mod:`.unet`);
:class:`ExplicitAttentionReference` is the published explicit-softmax reference mode;
:meth:`CapturedMaps.classifier_input` turns the maps into the relation classifier's input.
"""

from .installer import CAPTURE_BACKENDS, AttentionCapture, ExplicitAttentionReference, map_spec
from .maps import CapturedMaps, LayerMaps, resize_maps_for_classifier
from .recording import MapSpec

__all__ = [
    "CAPTURE_BACKENDS",
    "AttentionCapture",
    "CapturedMaps",
    "ExplicitAttentionReference",
    "LayerMaps",
    "MapSpec",
    "map_spec",
    "resize_maps_for_classifier",
]
