#!/usr/bin/env python
"""A bar chart of one ``gpu_flux_dev.py`` report's steering-iteration and whole-image rows.

    python bench/chart_gpu_report.py bench/results/flux-dev_nvidia-h200_20261204-153721_quick.jsonl \
        docs/img/gpu_steering_h200.png

Reads the report's ``.jsonl`` (rows as measured; skipped rows are left out) and draws one bar per
row, its length proportional to the time, the time written beside it: what people choosing a mode,
a schedule or a classifier depth would rather see than read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GROUPS = {"steering iteration (fwd+bwd to latent)": ("one steering iteration", "ms"),
          "whole image, denoising loop": ("one whole image (denoising loop)", "s")}
WIDTH, LABEL_W, BAR_H, GAP = 760, 300, 18, 6


def measured_rows(jsonl: Path) -> dict[str, list[tuple[str, float]]]:
    """Group title -> [(variant, ms)] of the chart's groups, in the report's order (a line that is
    not a JSON object: ``L2SError`` naming it, e.g. the report's ``.md`` given for its ``.jsonl``)."""
    from l2s.files.state import read_jsonl_lines

    groups: dict[str, list[tuple[str, float]]] = {}
    for _, row in read_jsonl_lines(jsonl, "give the .jsonl that gpu_flux_dev.py wrote beside its .md"):
        if row.get("group") in GROUPS and row.get("ms"):
            groups.setdefault(row["group"], []).append((row["variant"], float(row["ms"])))
    return groups


def bar_lengths(values: list[float], room: int) -> list[int]:
    """Pixel lengths proportional to ``values``, the longest ``room``."""
    top = max(values)
    return [max(1, round(room * v / top)) for v in values]


def chart(groups: dict[str, list[tuple[str, float]]], title: str) -> Image.Image:
    font = ImageFont.load_default()
    rows = sum(len(r) + 2 for r in groups.values()) + 1
    image = Image.new("RGB", (WIDTH, rows * (BAR_H + GAP) + GAP), "white")
    draw = ImageDraw.Draw(image)
    y = GAP
    draw.text((GAP, y), title, fill="black", font=font)
    room = WIDTH - LABEL_W - 90
    for group, rows_ in groups.items():
        name, unit = GROUPS[group]
        y += 2 * (BAR_H + GAP)
        draw.text((GAP, y - BAR_H), name, fill="black", font=font)
        for (variant, ms), length in zip(rows_, bar_lengths([ms for _, ms in rows_], room)):
            draw.text((GAP, y + 3), variant[:48], fill="black", font=font)
            draw.rectangle([LABEL_W, y, LABEL_W + length, y + BAR_H], fill=(70, 110, 190))
            shown = f"{ms:.1f} ms" if unit == "ms" else f"{ms / 1000:.2f} s"
            draw.text((LABEL_W + length + 6, y + 3), shown, fill="black", font=font)
            y += BAR_H + GAP
    return image


def main(argv: list[str] | None = None) -> int:
    from l2s.cli.checks import check_input_paths, check_output_file
    from l2s.errors import L2SError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path, help="a report's .jsonl (bench/results/*.jsonl)")
    p.add_argument("out", type=Path, help="PNG to write")
    args = p.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        p.exit(2, f"{p.prog}: error: out {args.out}: give a PNG path (ending in .png)\n")
    try:        # a missing, damaged or unwritable path: one line, as the l2s CLI says it, not a traceback
        check_input_paths(args.report, "report")
        check_output_file(args.out, "out")
        groups = measured_rows(args.report)
    except L2SError as error:
        p.exit(2, f"{p.prog}: error: {error}\n")
    if not groups:
        p.exit(2, f"{p.prog}: error: {args.report}: no measured steering-iteration or whole-image rows\n")
    title = f"{args.report.stem}: FLUX.1-dev architecture, random weights (shorter is faster)"
    chart(groups, title).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
