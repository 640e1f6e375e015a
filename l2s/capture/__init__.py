"""l2s.capture: differentiable capture of token-selected cross-attention maps (FLUX, SD UNets).

:class:`AttentionCapture` installs map-recording processors (:mod:`.flux`, :mod:`.unet`);
:class:`ExplicitAttentionReference` is the published explicit-softmax reference mode;
:meth:`CapturedMaps.classifier_input` turns the maps into the relation classifier's input.
:class:`FluxSteeredForward` is FLUX's lean steered pass (per-step constants made once, only the
captured layers' maps computed), which the fast steering modes run.
"""

from .flux_steered import FluxSteeredForward, StepConstants, steered_forward_unsupported
from .installer import CAPTURE_BACKENDS, AttentionCapture, ExplicitAttentionReference, map_spec
from .maps import CapturedMaps, LayerMaps, pair_input, resize_maps_for_classifier
from .recording import MapSpec

__all__ = [
    "CAPTURE_BACKENDS",
    "AttentionCapture",
    "CapturedMaps",
    "ExplicitAttentionReference",
    "FluxSteeredForward",
    "LayerMaps",
    "MapSpec",
    "StepConstants",
    "map_spec",
    "pair_input",
    "resize_maps_for_classifier",
    "steered_forward_unsupported",
]
