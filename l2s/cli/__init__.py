"""The `l2s` command line."""

from .app import main

__all__ = ["main"]
