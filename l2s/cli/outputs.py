"""The last line of a command: every file it wrote, or its error."""
from __future__ import annotations

import logging
import re
import sys
from collections.abc import Collection
from pathlib import Path

from tqdm.auto import tqdm

# The library's messages name the Python argument beside the flag ("--restart (resume=False in
# Python)"); a command-line user only needs the flag.
_PYTHON_HINT = re.compile(r" \((?:resume|restart)=(?:True|False)(?: in Python)?\)")


class _AboveBars(logging.Handler):
    """Writes each line with ``tqdm.write``: above a running progress bar, not glued to its end; a
    warning every process meets (``l2s.distributed.EVERY_PROCESS``) once per machine, as :func:`say`."""

    def emit(self, record: logging.LogRecord) -> None:
        from l2s.distributed import line_to_say

        try:
            line = self.format(record)
            if getattr(record, "l2s_every_process", False):
                line = line_to_say(line)
            if line:
                tqdm.write(line, file=sys.stderr)
        except Exception:
            self.handleError(record)


def log_to_stderr() -> None:
    """The libraries' warnings (a damaged chunk redone, an engine being built) as ``l2s: ...`` lines
    on stderr; like ``logging.basicConfig``, nothing changes where logging is set up already."""
    logging.basicConfig(level=logging.WARNING, format="l2s: %(message)s", handlers=[_AboveBars()])


def say(line: str) -> None:
    """One stderr line; in a spread run once per machine unless a process met it alone."""
    from l2s.distributed import line_to_say

    if said := line_to_say(line):
        print(said, file=sys.stderr)


def say_error(error: Exception, code: int = 2) -> int:
    """:func:`error_line` of a user error, said as :func:`say` does; returns the exit code."""
    say(error_line(error))
    return code


def error_line(error: Exception) -> str:
    """``l2s: error: ...`` for a user error, worded for the command line."""
    return "l2s: error: " + _PYTHON_HINT.sub("", str(error))


def wrote_line(out: Path, names: list[str]) -> str:
    """``l2s: wrote a, b and c in OUT``."""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"l2s: wrote {listed} in {out}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def folder_outputs(out: Path, only: Collection[str] | None = None) -> list[str]:
    """The files of a run folder: those at its top by name, those below counted per folder
    (``base/: 8 images and 16 record files``); hidden files (the lock) left out, and with ``only``
    every name not in it (a user's own file is not one the run wrote)."""
    out = Path(out)
    mine = [p for p in out.iterdir() if not p.name.startswith(".") and (only is None or p.name in only)]
    names = sorted(p.name for p in mine if p.is_file())
    for folder in sorted(p for p in mine if p.is_dir()):
        files = [p for p in folder.rglob("*") if p.is_file()]
        images = sum(p.suffix == ".png" for p in files)
        if images:
            records = len(files) - images
            names.append(f"{folder.name}/: {_count(images, 'image')} and {_count(records, 'record file')}")
        elif files:
            names.append(f"{folder.name}/: {_count(len(files), 'file')}")
    return names
