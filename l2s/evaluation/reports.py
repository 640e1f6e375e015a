"""Reports of evaluation runs: per-mode scores, the comparison table and the files they go to."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from l2s.errors import L2SError
from l2s.files import atomic_write_text
from .html_report import write_html_report
from .pictures import contact_sheet
from .records import BASE, RESULTS_FILE, STEERED, SUMMARY_FILE, ImageRecord, open_rgb, write_json
from .stats import Summary

SHEET_PAGE = 64  # images per contact-sheet page
NAMED_NO_VERDICT = 3   # prompts without a verdict named in the terminal's line (summary.json names all)


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else 0.0


@dataclass
class ModeReport:
    """Scores of one mode (base, steered, or a scored image folder)."""

    summary: Summary
    records: list[ImageRecord] = field(repr=False)

    @property
    def generate_s_per_image(self) -> float:
        return _mean(r.meta.get("generate_s") for r in self.records)

    @property
    def generate_cpu_s_per_image(self) -> float:
        """CPU seconds (all threads) per generated image; 0 for runs recorded before it was kept."""
        return _mean(r.meta.get("generate_cpu_s") for r in self.records)

    @property
    def score_s_per_image(self) -> float:
        return _mean(r.meta.get("score_s") for r in self.records)

    def warnings(self) -> list[str]:
        """What made this mode's steering doubtful (resampled maps, ...), each line once."""
        return list(dict.fromkeys(w for r in self.records for w in r.meta.get("warnings") or []))

    def status_counts(self) -> dict[str, int]:
        """How many images were generated, scored, re-scored or resumed in this call."""
        return dict(Counter(r.status for r in self.records))

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary.to_dict(), "generate_s_per_image": self.generate_s_per_image,
                "generate_cpu_s_per_image": self.generate_cpu_s_per_image,
                "score_s_per_image": self.score_s_per_image, "status_counts": self.status_counts(),
                "warnings": self.warnings()}


# What differs between two runs of the same prompts and seeds: timings and how images were reached.
RUN_DEPENDENT = ("generate_s_per_image", "generate_cpu_s_per_image", "score_s_per_image", "status_counts")
# The same for one image's record ``meta``: timings and the batch it was made in.
RUN_DEPENDENT_META = ("generate_s", "generate_cpu_s", "score_s", "batch")


def comparable_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A ``summary.json`` without what differs between equal runs (wall time, per-image timings,
    resume counts): two runs of the same prompts and seeds, batched, resumed or spread over
    processes, compare equal."""
    summary = {k: v for k, v in summary.items() if k != "wall_time_s"}
    summary["modes"] = {name: {k: v for k, v in mode.items() if k not in RUN_DEPENDENT}
                        for name, mode in summary.get("modes", {}).items()}
    return summary


@dataclass
class EvalReport:
    """A whole run: one :class:`ModeReport` per mode, the settings and the wall time of the call that
    made the report (a resumed run's earlier calls not included)."""

    modes: dict[str, ModeReport]
    settings: dict[str, Any]
    wall_time_s: float
    # What the images were made with, the model's defaults in place of the settings' None
    # ({"sampling": ..., "schedule": ...}); None where unknown (a scored folder, a stand-in steerer).
    resolved: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"settings": self.settings, "wall_time_s": self.wall_time_s,
                                **({"resolved": self.resolved} if self.resolved else {}),
                                "modes": {name: m.to_dict() for name, m in self.modes.items()}}
        if BASE in self.modes and STEERED in self.modes:
            data["accuracy_gain"] = self.modes[STEERED].summary.accuracy - self.modes[BASE].summary.accuracy
        return data

    def no_verdict(self) -> dict[str, str]:
        """Prompt -> why its images have no verdict (in no count), over every mode."""
        return {prompt: why for m in self.modes.values() for prompt, why in m.summary.no_verdict.items()}

    def no_verdict_line(self) -> str | None:
        """One line saying how many images have no verdict and naming their prompts; None when all have one."""
        unjudged = self.no_verdict()
        if not unjudged:
            return None
        images = sum(m.summary.n_no_verdict for m in self.modes.values())
        named = [f"{prompt!r} ({why})" for prompt, why in list(unjudged.items())[:NAMED_NO_VERDICT]]
        more = len(unjudged) - len(named)
        return (f"no verdict for {images} image{'s' * (images != 1)} of {len(unjudged)} "
                f"prompt{'s' * (len(unjudged) != 1)}, in no count: {'; '.join(named)}"
                + (f"; and {more} more (summary.json names them)" if more else ""))

    def table(self) -> str:
        """Printable comparison: overall, per tag, per relation; one column per mode."""
        names = list(self.modes)
        rows = self._rows()
        first = max(len(r[0]) for r in rows)
        width = max([len(n) for n in names] + [len(c) for _, cells in rows for c in cells])
        lines = [f"{'':<{first}}  " + "  ".join(f"{n:>{width}}" for n in names),
                 "-" * (first + (width + 2) * len(names))]
        lines += [f"{label:<{first}}  " + "  ".join(f"{c:>{width}}" for c in cells) for label, cells in rows]
        if BASE in self.modes and STEERED in self.modes:
            gain = self.to_dict()["accuracy_gain"]
            lines.append(f"{'steered - base accuracy':<{first}}  {gain:+.3f}")
        lines.append(f"{'wall time, this call':<{first}}  {self.wall_time_s:.1f} s")
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, list[str]]]:
        """(label, one cell per mode) of every row of :meth:`table`."""
        names = list(self.modes)
        summaries = [self.modes[n].summary for n in names]
        overall = [_cell((s.n_correct, s.n_images)) for s in summaries]
        rows: list[tuple[str, list[str]]] = [("overall (images)", overall)]
        tags = sorted({t for s in summaries for t in s.per_tag})
        if len(tags) > 1:
            rows += [(f"tag {t}", [_cell(s.per_tag.get(t)) for s in summaries]) for t in tags]
        relations = sorted({r for s in summaries for r in s.per_relation})
        rows += [(f"relation {r}", [_cell(s.per_relation.get(r)) for s in summaries]) for r in relations]
        rows.append(("prompts with any correct", [_cell((s.n_prompts_any_correct, s.n_prompts)) for s in summaries]))
        rows.append((f"mean score ({summaries[0].rule})" if summaries else "mean score",
                     [f"{s.mean_score:.3f}" for s in summaries]))
        if any(s.n_no_verdict for s in summaries):
            rows.append(("no verdict (images, not counted)", [f"{s.n_no_verdict}" for s in summaries]))
        if any(self.modes[n].generate_s_per_image for n in names):
            rows.append(("generation s/image", [f"{self.modes[n].generate_s_per_image:.3f}" for n in names]))
        rows.append(("scoring s/image", [f"{self.modes[n].score_s_per_image:.3f}" for n in names]))
        return rows


def _cell(pair: Sequence[int] | None) -> str:
    if not pair:
        return "-"
    correct, total = pair
    return f"{correct}/{total} {correct / total if total else 0.0:.3f}"


def _open(path: Path) -> Image.Image:
    try:
        return open_rgb(path)
    except Exception as error:  # PIL's decoders raise many types
        raise L2SError(f"cannot read the image {path} for the contact sheet ({type(error).__name__}: "
                       f"{error}); rerun the same command to make it again") from None


def write_outputs(out: Path, report: EvalReport, contact_sheets: bool, columns: int = 8) -> list[Path]:
    """results.jsonl, summary.json, the contact sheets (images interleaved across modes) and
    report.html (:mod:`.html_report`)."""
    atomic_write_text(out / RESULTS_FILE, "".join(
        json.dumps({**record.result.to_dict(), "meta": record.meta}, default=str) + "\n"
        for mode in report.modes.values() for record in mode.records))
    write_json(out / SUMMARY_FILE, report.to_dict())
    for stale in out.glob("contact_sheet_*.png"):  # a smaller rerun must not leave old pages behind
        stale.unlink()
    sheets = _contact_sheets(out, report, columns) if contact_sheets else []
    write_html_report(out, report, sheets)
    return sheets


def _contact_sheets(out: Path, report: EvalReport, columns: int) -> list[Path]:
    # Interleave so that the same prompt and seed sit side by side in every mode.
    per_mode = [m.records for m in report.modes.values()]
    tiles = [(name, r) for group in zip(*per_mode) for name, r in zip(report.modes, group)]
    pages = [tiles[i:i + SHEET_PAGE] for i in range(0, len(tiles), SHEET_PAGE)]
    paths = []
    for number, page in enumerate(pages, 1):
        images = [_open(r.image_path) for _, r in page]
        labelled = [replace(r.result, prompt=f"[{name} s{r.meta.get('seed', '?')}] {r.result.prompt}")
                    for name, r in page]
        paths.append(contact_sheet(images, labelled, out / f"contact_sheet_{number:02d}.png", columns=columns))
    return paths

