"""User-facing errors. The CLI prints ``str(error)`` on one line and exits non-zero."""


class L2SError(Exception):
    """Base class for every error l2s raises on bad input."""


class PromptError(L2SError):
    """The prompt is empty, malformed, or names a relation without both objects."""


class TokenizationError(L2SError):
    """An object phrase is not in the tokenizer output, or the prompt is too long."""


class ClassifierMismatchError(L2SError):
    """The classifier expects maps the diffusion model does not produce (channels, size, steps)."""


class ModelLoadError(L2SError):
    """A model or classifier file is missing, unreadable, or corrupt."""


class UnsupportedRelationError(L2SError):
    """The relation is not one of the classifier's classes."""


class UsageError(L2SError):
    """Generation settings that cannot work together (size, steps vs schedule, ...)."""
