"""The one library line l2s drops: transformers' notice, for every image processor a diffusers
pipeline names, that torchvision is missing and the PIL processor serves instead. That is all l2s
needs, so the line only worries users. Importing this module installs the filter (no import of
transformers needed): the packages that load diffusers pipelines import it first."""
from __future__ import annotations

import logging

_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_FALLBACK not in record.getMessage()


def drop_pure_noise() -> None:
    """Filter transformers' torchvision fallback notice (once per process)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())


drop_pure_noise()
