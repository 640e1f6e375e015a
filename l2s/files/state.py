"""State files read back, or a :class:`DamagedFileError` naming the file and how to recover."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from l2s.errors import L2SError


class DamagedFileError(L2SError):
    """A state file cannot be read back; the message names it and says how to recover."""


def read_state_json(path: str | Path, fix: str) -> Any | None:
    """The parsed JSON file, None when it does not exist; :class:`DamagedFileError` (ending with
    ``fix``, how to recover) when it exists but cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{path} is damaged ({_reason(error)}); {fix}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise DamagedFileError(f"{path} is damaged ({_reason(error)}); {fix}") from None


def read_jsonl_lines(path: str | Path, fix: str, torn_tail_ok: bool = True,
                     on_damaged: Callable[[int], None] | None = None) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every line of a JSON-lines file ([] when it does not exist).

    A line that is not a JSON object is a :class:`DamagedFileError` naming the file and line
    (ending with ``fix``), never a silent stop; with ``on_damaged``, that is called with its number
    instead and the line left out (a reader that redoes what the line recorded). ``torn_tail_ok``: a
    last line without its newline that does not parse is what a writer killed mid-append leaves; it
    is left out quietly.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise DamagedFileError(f"{path} cannot be read ({_reason(error)}); {fix}") from None
    lines = data.split(b"\n")
    rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            if torn_tail_ok and number == len(lines):  # no newline after it: a torn append
                break
            row, why = None, f"is damaged ({_reason(error)})"
        else:
            why = "is not a JSON object"
        if isinstance(row, dict):
            rows.append((number, row))
        elif on_damaged is not None:
            on_damaged(number)
        else:
            raise DamagedFileError(f"{path} line {number} {why}; {fix}")
    return rows


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
