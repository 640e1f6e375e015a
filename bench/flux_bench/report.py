"""Rows of the GPU benchmark and where they go: printed and appended to Markdown + JSONL as measured.

Each row isolates one change: it names the row it is compared with (``against``, measured before it
in the same run) and the speed-up is that row's time over its own. A crash later in the run leaves
every row measured so far on disk.
"""
from __future__ import annotations

import datetime
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ["resolution", "measurement", "variant", "time (ms)", "speed-up", "peak extra memory (GiB)",
           "transformer forwards", "notes"]


@dataclass
class Row:
    resolution: int                 # pixels a side; 0 for rows without a resolution
    group: str                      # what is measured
    variant: str                    # how
    ms: float | None = None
    peak_extra: int | None = None   # bytes allocated above the level before the measurement
    forwards: int | None = None
    note: str = ""
    against: str | None = None      # variant of the same group (and resolution) it is compared with
    status: str = "measured"        # or "skipped" (time budget), "stopped" (hard limit), "failed" (error, OOM)

    @property
    def key(self) -> tuple[int, str]:
        return self.resolution, self.group


def format_ms(ms: float) -> str:
    """At least four significant digits, so ratios recomputed from the table agree with it."""
    return f"{ms:.{max(0, 3 - math.floor(math.log10(ms)))}f}" if ms > 0 else f"{ms:g}"


def gib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.2f}"


def table_header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|---|---|---|---:|---:|---:|---:|---|"


class RowWriter:
    """Prints each row and appends it to ``<stem>.md`` (under the header) and ``<stem>.jsonl``."""

    def __init__(self, markdown: Path, header: str) -> None:
        self.markdown = markdown
        self.jsonl = markdown.with_suffix(".jsonl")
        self.rows: list[Row] = []
        markdown.parent.mkdir(parents=True, exist_ok=True)
        text = header.rstrip("\n") + "\n\n" + table_header() + "\n"
        markdown.write_text(text)
        self.jsonl.write_text("")
        print(text, end="", flush=True)

    def speed_up(self, row: Row) -> str:
        if row.ms is None:
            return "n/a"
        if row.against is None:
            return "ref"
        base = next((r for r in self.rows if r.key == row.key and r.variant == row.against), None)
        if base is None or base.ms is None:
            return "-"
        return f"{base.ms / row.ms:.2f}x vs {row.against}"

    def write(self, row: Row) -> Row:
        """Record ``row``: one table line (stdout and the Markdown file) and one JSON line, flushed."""
        speed_up = self.speed_up(row)
        self.rows.append(row)
        resolution = f"{row.resolution}²" if row.resolution else "-"
        time_ms = "n/a" if row.ms is None else format_ms(row.ms)
        forwards = "" if row.forwards is None else str(row.forwards)
        line = (f"| {resolution} | {row.group} | {row.variant} | {time_ms} | {speed_up} | {gib(row.peak_extra)} "
                f"| {forwards} | {row.note} |")
        with self.markdown.open("a") as md:
            md.write(line + "\n")
        record = {**asdict(row), "speed_up": speed_up,
                  "time": datetime.datetime.now().isoformat(timespec="seconds")}
        with self.jsonl.open("a") as jl:
            jl.write(json.dumps(record) + "\n")
        print(line, flush=True)
        return row

    def counts(self) -> dict[str, int]:
        """Rows written per status (measured, skipped, stopped, failed)."""
        counts = dict.fromkeys(("measured", "skipped", "stopped", "failed"), 0)
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def footer(self, lines: list[str]) -> None:
        text = "\n" + "\n".join(lines) + "\n"
        with self.markdown.open("a") as md:
            md.write(text)
        print(text, end="", flush=True)
        sys.stdout.flush()
