"""State files read back, or a :class:`DamagedFileError` naming the file and how to recover."""
from __future__ import annotations

import json
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


def read_jsonl_lines(path: str | Path, fix: str, torn_tail_ok: bool = True) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every line of a JSON-lines file ([] when it does not exist).

    A line that is not a JSON object is a :class:`DamagedFileError` naming the file and line
    (ending with ``fix``), never a silent stop. ``torn_tail_ok``: a last line without its newline
    that does not parse is what a writer killed mid-append leaves; it is left out instead.
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
            raise DamagedFileError(f"{path} line {number} is damaged ({_reason(error)}); {fix}") from None
        if not isinstance(row, dict):
            raise DamagedFileError(f"{path} line {number} is not a JSON object; {fix}")
        rows.append((number, row))
    return rows


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
