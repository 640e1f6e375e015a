"""``--quiet``: the libraries' log lines below errors, their warnings and their loading bars off."""
from __future__ import annotations

import contextlib
import logging
import warnings

LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "accelerate", "peft", "torch")


def _progress_bar_switches() -> list:
    """(is_enabled, enable, disable) of diffusers' and transformers' loading bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    return [(m.is_progress_bar_enabled, m.enable_progress_bar, m.disable_progress_bar)
            for m in (diffusers_logging, transformers_logging)]


@contextlib.contextmanager
def library_bars_off(off: bool = True):
    """Within: diffusers' and transformers' loading bars off (when ``off``); as they were after."""
    if not off:
        yield
        return
    switches = _progress_bar_switches()
    enabled = [is_enabled() for is_enabled, _, _ in switches]
    try:
        for _, _, disable in switches:
            disable()
        yield
    finally:
        for (_, enable, _), was_enabled in zip(switches, enabled):
            if was_enabled:
                enable()


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True):
    """Within: the libraries' warnings, log lines below errors and loading bars off (when ``quiet``);
    everything as it was after."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings(), library_bars_off():
            for name in LIBRARIES:
                warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
