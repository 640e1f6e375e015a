"""Training curves as a picture: panels of logged values per epoch, drawn with PIL only."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .pictures import LINE_COLOURS
from .records import save_png

Panel = tuple[str, Sequence[str]]   # a panel's title and the log keys it draws
PANEL_SIZE = (360, 230)
CURVES_FILE = "curves.png"


def save_curves(out_dir: str | Path, rows: Sequence[dict], panels: Sequence[Panel], title: str) -> Path:
    """Draw ``rows`` (a run's log, one row per epoch) into ``OUT/curves.png``, replacing it whole."""
    path = Path(out_dir) / CURVES_FILE
    save_png(curves_picture(rows, panels, title), path)
    return path


def curves_picture(rows: Sequence[dict], panels: Sequence[Panel], title: str) -> Image.Image:
    """One panel per ``(title, keys)`` side by side: each key's values over the rows' ``epoch``.

    A row without a key (a value logged every few epochs) leaves a gap in that curve only;
    non-numbers and non-finite values are left out.
    """
    width, height = PANEL_SIZE
    image = Image.new("RGB", (width * len(panels), height + 22), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), title, fill="black")
    for k, (name, keys) in enumerate(panels):
        series = {key: _points(rows, key) for key in keys}
        _panel(draw, name, series, (k * width + 44, 40, (k + 1) * width - 10, height - 6))
    return image


def _points(rows: Sequence[dict], key: str) -> list[tuple[float, float]]:
    values = [(row.get("epoch"), row.get(key)) for row in rows]
    return [(float(x), float(y)) for x, y in values if _number(x) and _number(y)]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _panel(draw: ImageDraw.ImageDraw, name: str, series: dict[str, list], box: tuple[float, ...]) -> None:
    left, top, right, bottom = box
    draw.text((left, top - 16), name, fill="black")
    _legend(draw, name, list(series), (left, top - 16))
    draw.rectangle([left, top, right, bottom - 14], outline=(120, 120, 120))
    points = [p for values in series.values() for p in values]
    if not points:
        draw.text((left + 8, top + 8), "nothing logged yet", fill=(120, 120, 120))
        return
    (x0, x1), (y0, y1) = (_span([p[i] for p in points]) for i in (0, 1))
    plot = (left, top, right, bottom - 14)
    to_xy = lambda x, y: (left + (x - x0) / (x1 - x0) * (right - left),   # noqa: E731
                          plot[3] - (y - y0) / (y1 - y0) * (plot[3] - top))
    epochs = sorted({min(p[0] for p in points), max(p[0] for p in points)})
    _axes(draw, plot, epochs, (y0, y1), to_xy)
    for k, (key, values) in enumerate(series.items()):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        xy = [to_xy(x, y) for x, y in values]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def _legend(draw: ImageDraw.ImageDraw, name: str, keys: list[str], at: tuple[float, float]) -> None:
    """Each key in its curve's colour on the title's line (not over the curves)."""
    x = at[0] + draw.textlength(name) + 12
    for k, key in enumerate(keys):
        draw.text((x, at[1]), key, fill=LINE_COLOURS[k % len(LINE_COLOURS)])
        x += draw.textlength(key) + 10


def _span(values: list[float]) -> tuple[float, float]:
    """The axis range of ``values``, widened a little (a constant series gets a visible band)."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or abs(high) * 0.1 or 0.5
    return low - pad, high + pad


def _axes(draw: ImageDraw.ImageDraw, plot: tuple, epochs: list[float], ys: tuple, to_xy) -> None:
    """Three grid lines with their values on the y axis; the first and last epoch on the x axis."""
    left, top, right, bottom = plot
    for fraction in (0.1, 0.5, 0.9):
        value = ys[0] + fraction * (ys[1] - ys[0])
        y = to_xy(epochs[0], value)[1]
        draw.line([left + 1, y, right - 1, y], fill=(228, 228, 228))
        draw.text((left - 42, y - 6), f"{value:.3g}", fill="black")
    if len(epochs) == 1:    # one epoch logged: its point is in the middle
        draw.text(((left + right) / 2 - 20, bottom + 2), f"epoch {epochs[0]:g}", fill="black")
        return
    for epoch in epochs:
        draw.text((to_xy(epoch, ys[0])[0] - 6, bottom + 2), f"{epoch:g}", fill="black")
    draw.text(((left + right) / 2 - 14, bottom + 2), "epoch", fill=(90, 90, 90))
