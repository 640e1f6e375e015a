"""Pictures of results: contact sheets of scored images, and the target probability while steering."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .specs import ImageResult

_BOX_COLOURS = ((255, 140, 0), (0, 160, 255), (200, 0, 200), (120, 80, 0), (0, 120, 60))
_LINE_COLOURS = ((220, 40, 40), (40, 80, 220), (40, 170, 60), (150, 50, 200))


def contact_sheet(images: Sequence[Image.Image], results: Sequence[ImageResult], path: str | Path,
                  columns: int = 8, scale: float | None = None) -> Path:
    """Save a PNG grid: each image with its detected boxes, a green (pass) or red (fail) border
    and its prompt and reason underneath. ``scale=None`` enlarges or shrinks images to ~256 px."""
    if len(images) != len(results):
        raise ValueError("contact_sheet needs one result per image")
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if scale is None:
        scale = 256 / max(max(img.size) for img in images)
    font = ImageFont.load_default()
    border, text_lines, line_height = 4, 4, 12
    cell_w = max(round(img.width * scale) for img in images) + 2 * border
    cell_h = max(round(img.height * scale) for img in images) + 2 * border + text_lines * line_height + 4
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars_per_line = max(8, int(cell_w / 6.5))
    for i, (image, result) in enumerate(zip(images, results)):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        tile = _boxed_tile(image, result, scale, font)
        edge = (0, 170, 0) if result.correct else (210, 0, 0)
        draw.rectangle([x0, y0, x0 + tile.width + 2 * border - 1, y0 + tile.height + 2 * border - 1], fill=edge)
        sheet.paste(tile, (x0 + border, y0 + border))
        caption = textwrap.wrap(f"{result.prompt} [{result.reason}]", chars_per_line)[:text_lines]
        for k, line in enumerate(caption):
            draw.text((x0 + 2, y0 + tile.height + 2 * border + 2 + k * line_height), line, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


def _boxed_tile(image: Image.Image, result: ImageResult, scale: float, font) -> Image.Image:
    """The image scaled by ``scale`` with each detected box outlined and labelled."""
    tile = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    tile_draw = ImageDraw.Draw(tile)
    for j, (label, det) in enumerate(result.detections.items()):
        if det is None:
            continue
        colour = _BOX_COLOURS[j % len(_BOX_COLOURS)]
        x1, y1, x2, y2 = (v * scale for v in det.box)
        tile_draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=2)
        tile_draw.text((x1 + 2, y1 + 1), label, fill=colour, font=font)
    return tile


def probability_plot(records: Sequence, width: int = 360, height: int = 200) -> Image.Image:
    """A PNG-ready PIL plot of p(target relation) of the first image over the steering iterations
    (one line per relation, grey separators between denoising steps), drawn with PIL only.

    ``records`` are steering diagnostics records (``step``, ``relation``, ``target_probability``).
    """
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 34, width - 10, 18, height - 22
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    for value in (0.0, 0.5, 1.0):
        y = bottom - value * (bottom - top)
        draw.line([left - 3, y, left, y], fill=(120, 120, 120))
        draw.text((2, y - 6), f"{value:.1f}", fill="black")
    draw.text((left, 3), "p(target relation) while steering", fill="black")
    draw.text((left, bottom + 6), "iteration (grey lines: next denoising step)", fill=(90, 90, 90))
    records = list(records)
    if not records:
        return image
    xs = [left + (right - left) * (k + 0.5) / len(records) for k in range(len(records))]
    for k in range(1, len(records)):
        if records[k].step != records[k - 1].step:
            x = (xs[k] + xs[k - 1]) / 2
            draw.line([x, top, x, bottom], fill=(190, 190, 190))
    for relation in sorted({r.relation for r in records}):
        points = [(x, bottom - float(r.target_probability[0]) * (bottom - top))
                  for x, r in zip(xs, records) if r.relation == relation]
        colour = _LINE_COLOURS[relation % len(_LINE_COLOURS)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    return image
