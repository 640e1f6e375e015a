"""``report.html`` of an evaluation run: accuracy with Wilson intervals, the paired sign test of
steered against base, the per-relation table, the contact sheets and the worst failures.

The page is one self-contained file next to ``summary.json``; images are linked relative to it,
so the run folder can be moved or served as it is. ``report`` is an
:class:`~l2s.evaluation.reports.EvalReport` (which writes this page).
"""
from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from l2s.files import atomic_write_text

from .records import BASE, STEERED, ImageRecord
from .stats import paired_comparison, wilson_interval

REPORT_FILE = "report.html"
WORST_FAILURES = 12   # failures shown with their images

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.sheet { max-width: 100%; border: 1px solid #ccc; }
.failures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 17em; }
figure img { width: 7.5em; image-rendering: pixelated; border: 3px solid #c00; }
figure img.ok { border-color: #0a0; }
figcaption { font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def write_html_report(out: Path, report, sheets: Sequence[Path]) -> Path:
    """Write ``out/report.html`` for ``report`` (``sheets``: its contact-sheet PNGs) atomically."""
    path = Path(out) / REPORT_FILE
    atomic_write_text(path, render_html(report, sheets, Path(out)))
    return path


def render_html(report, sheets: Sequence[Path], out: Path) -> str:
    """The page's HTML; image links are relative to ``out``."""
    first = next(iter(report.modes.values()), None)
    rule = first.summary.rule if first else ""
    body = [f"<h1>l2s eval: spatial accuracy ({_e(rule)} rule)</h1>", _warnings(report),
            _summary(report), _no_verdict(report), _paired(report), _relations(report), _sheets(sheets, out),
            _failures(report, out), _settings(report)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>l2s eval report</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(part for part in body if part) + "\n</body></html>\n")


def _warnings(report) -> str:
    """What made steering doubtful, above the numbers it qualifies (empty when nothing did)."""
    lines = [(mode, line) for mode, part in report.modes.items() for line in part.warnings()]
    if not lines:
        return ""
    items = "".join(f"<li>{_e(mode)} images: {_e(line)}</li>" for mode, line in lines)
    return f"<h2>Warnings</h2><ul class=\"warnings\">{items}</ul>"


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence], css_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>'


def _proportion(correct: int, total: int) -> tuple[str, str]:
    """("k/n = 0.625", "[0.31, 0.86]"): the share and its 95% Wilson interval."""
    low, high = wilson_interval(correct, total)
    share = correct / total if total else 0.0
    return f"{correct}/{total} = {share:.3f}", f"[{low:.3f}, {high:.3f}]"


def _summary(report) -> str:
    generated = any(mode.generate_s_per_image for mode in report.modes.values())   # a scored folder: none
    rows = []
    for name, mode in report.modes.items():
        s = mode.summary
        share, interval = _proportion(s.n_correct, s.n_images)
        prompts, _ = _proportion(s.n_prompts_any_correct, s.n_prompts)
        timing = (f"{mode.generate_s_per_image:.3f}",) if generated else ()
        rows.append((name, share, interval, f"{s.mean_score:.3f}", prompts, *timing))
    header = ("mode", "correct images", "95% Wilson interval", "mean score", "prompts with any correct",
              *(("generation s/image",) if generated else ()))
    return "<h2>Summary</h2>" + _table(header, rows, "summary")


def _no_verdict(report) -> str:
    """The prompts whose images no detector can judge, named apart: they are in no number of the page."""
    unjudged = report.no_verdict()
    if not unjudged:
        return ""
    images = sum(m.summary.n_no_verdict for m in report.modes.values())
    note = (f"<p class=\"note\">The detector can never judge these prompts: their {images} images have no "
            "verdict and are in no number of this page.</p>")
    return "<h2>No verdict</h2>" + note + _table(("prompt", "why"), list(unjudged.items()), "no-verdict")


def _pair_key(record: ImageRecord):
    meta = record.meta
    return meta.get("prompt_index", record.result.prompt), meta.get("seed", record.result.name)


def _paired(report) -> str:
    if BASE not in report.modes or STEERED not in report.modes:
        return ""
    correct = {mode: {_pair_key(r): r.result.correct for r in report.modes[mode].records}
               for mode in (STEERED, BASE)}
    c = paired_comparison(correct[STEERED], correct[BASE])
    rows = [("same prompt and seed", c.n_pairs), ("steered right, base wrong", c.a_only),
            ("base right, steered wrong", c.b_only),
            ("accuracy gain (steered - base)", f"{(c.a_correct - c.b_correct) / max(c.n_pairs, 1):+.3f}"),
            ("sign test p (two-sided, exact)", f"{c.p_value:.4g}")]
    note = ("<p class=\"note\">The sign test (McNemar's exact test) uses the discordant pairs only: the "
            "chance of a split at least this uneven if steering made no difference.</p>")
    return "<h2>Steered against base, paired</h2>" + _table(("pairs", "value"), rows, "paired") + note


def _relations(report) -> str:
    names = list(report.modes)
    relations = sorted({r for m in report.modes.values() for r in m.summary.per_relation})
    rows = []
    for relation in relations:
        row = [relation]
        for name in names:
            pair = report.modes[name].summary.per_relation.get(relation)
            row += list(_proportion(*pair)) if pair else ["-", "-"]
        rows.append(row)
    header = ["relation"] + [f"{n} {what}" for n in names for what in ("holds", "95% interval")]
    return "<h2>Per relation</h2>" + _table(header, rows, "relations")


def _sheets(sheets: Sequence[Path], out: Path) -> str:
    if not sheets:
        return ""
    images = "".join(f'<p><img class="sheet" src="{_e(_rel(p, out))}" alt="contact sheet {k}"></p>'
                     for k, p in enumerate(sheets, 1))
    return ("<h2>Contact sheets</h2><p class=\"note\">Boxes: detections; green border: correct, red: "
            "wrong, grey: no verdict.</p>" + images)


def _failures(report, out: Path) -> str:
    """The failures of the steered mode (else the only one): regressions first, then lowest score."""
    name = STEERED if STEERED in report.modes else next(iter(report.modes), None)
    if name is None:
        return ""
    base = report.modes.get(BASE) if name != BASE else None
    base_right = {_pair_key(r): r for r in base.records} if base else {}
    failed = [r for r in report.modes[name].records if r.result.correct is False]   # None: no verdict
    failed.sort(key=lambda r: (not _right(base_right.get(_pair_key(r))), r.result.score))
    if not failed:
        judged = "with a verdict " if report.modes[name].summary.n_no_verdict else ""
        return f"<h2>Worst failures ({_e(name)})</h2><p>None: every image {judged}is correct.</p>"
    figures = [_figure(r, base_right.get(_pair_key(r)), out) for r in failed[:WORST_FAILURES]]
    order = "Images the base mode got right come first, then the lowest scores." if base else "Lowest scores first."
    return (f"<h2>Worst failures ({_e(name)}): {min(len(failed), WORST_FAILURES)} of {len(failed)}</h2>"
            f"<p class=\"note\">{order}</p><div class=\"failures\">{''.join(figures)}</div>")


def _right(record: ImageRecord | None) -> bool:
    return record is not None and record.result.correct


def _figure(record: ImageRecord, base: ImageRecord | None, out: Path) -> str:
    result = record.result
    images = f'<img src="{_e(_rel(record.image_path, out))}" alt="{_e(result.name)}">'
    caption = f"<b>{_e(result.prompt)}</b><br>seed {_e(record.meta.get('seed', '?'))} · score {result.score:.2f}"
    caption += f"<br>{_e(result.reason)}"
    if base is not None:
        css = "ok" if base.result.correct else ""
        images += f' <img class="{css}" src="{_e(_rel(base.image_path, out))}" alt="base {_e(base.result.name)}">'
        caption += f"<br>left: steered; right: base ({'correct' if base.result.correct else 'wrong'})"
    return f"<figure>{images}<figcaption>{caption}</figcaption></figure>"


def _settings(report) -> str:
    text = json.dumps({**report.settings, **({"resolved": report.resolved} if report.resolved else {})},
                      indent=2, default=str)
    used = _table(("sampling", "used"), used_settings(report.settings, report.resolved), "used") \
        if report.resolved else ""
    return (f"<h2>Settings</h2><p>wall time of the call that wrote this report {report.wall_time_s:.1f} s "
            f"(a resumed run's earlier calls not included)</p>{used}"
            f"<details><summary>run settings</summary><pre>{_e(text)}</pre></details>")


# (label, the setting as requested in the CLI's and in run_eval's spelling, the resolved sampling's key)
_SAMPLING_ROWS = (("steps", ("steps", "num_inference_steps"), "num_inference_steps"),
                  ("height", ("height",), "height"), ("width", ("width",), "width"),
                  ("guidance", ("guidance", "guidance_scale"), "guidance_scale"))


def used_settings(settings: dict, resolved: dict) -> list[tuple[str, str]]:
    """(setting, what the images used) rows: a value the run left to the model marked so."""
    sampling = resolved.get("sampling") or {}
    rows = [(label, _used(sampling[key], _defaulted(settings, names), "model default"))
            for label, names, key in _SAMPLING_ROWS if key in sampling]
    if "true_cfg_scale" in sampling:
        negative = sampling.get("negative_prompt")
        rows.append(("true CFG", f"{sampling['true_cfg_scale']}" + (f", negative prompt {negative!r}"
                                                                    if negative is not None else "")))
    schedule = resolved.get("schedule")
    if schedule:
        rows += _schedule_rows(schedule, _defaulted(settings, ("step_size",)))
    return rows


def _defaulted(settings: dict, names: Sequence[str]) -> bool:
    """Whether the run asked for the default (recorded as None) under one of ``names``."""
    return any(name in settings and settings[name] is None for name in names)


def _used(value, defaulted: bool, default: str) -> str:
    if value is None:
        return "none (not read by this model)"
    return f"{value} ({default})" if defaulted else f"{value}"


def _schedule_rows(schedule: dict, step_size_defaulted: bool) -> list[tuple[str, str]]:
    """The steered images' schedule: its name, which steps it steers and how hard."""
    steered = [step for step, count in enumerate(schedule["iterations"]) if count]
    if not steered:
        return [("schedule", f"{schedule['name']}: no step steered")]
    which = _ranges(steered)
    iterations = _span(schedule["iterations"][step] for step in steered)
    size = _span(schedule["step_sizes"][step] for step in steered)
    return [("schedule", f"{schedule['name']}: steps {which} of {len(schedule['iterations'])} steered, "
                         f"{iterations} iterations each"),
            ("step size", _used(size, step_size_defaulted, "schedule default"))]


def _ranges(steps: list[int]) -> str:
    """``0-24`` for steps 0 to 24, ``0, 2-3`` for 0, 2 and 3 (increasing steps)."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and step == runs[-1][-1] + 1:
            runs[-1].append(step)
        else:
            runs.append([step])
    return ", ".join(f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _span(values) -> str:
    """``16``, or ``1 to 16`` where the steps differ."""
    values = sorted(set(values))
    return f"{values[0]}" if len(values) == 1 else f"{values[0]} to {values[-1]}"


def _rel(path: Path, out: Path) -> str:
    """``path`` relative to the page, with forward slashes (a URL)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix()


