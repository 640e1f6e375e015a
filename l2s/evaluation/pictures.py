"""Pictures of results: contact sheets of scored images, and the target probability while steering."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .records import save_png
from .specs import ImageResult

_BOX_COLOURS = ((255, 140, 0), (0, 160, 255), (200, 0, 200), (120, 80, 0), (0, 120, 60))
LINE_COLOURS = ((220, 40, 40), (40, 80, 220), (40, 170, 60), (150, 50, 200), (230, 130, 0),
                 (0, 150, 160), (120, 70, 30), (200, 60, 150))


def contact_sheet(images: Sequence[Image.Image], results: Sequence[ImageResult], path: str | Path,
                  columns: int = 8, scale: float | None = None) -> Path:
    """Save a PNG grid: each image with its detected boxes, a green (pass), red (fail) or grey (no
    verdict) border and its prompt and reason underneath. ``scale=None`` enlarges or shrinks each image to ~256 px
    (a folder scored from elsewhere may mix sizes: one large image must not shrink the others)."""
    if len(images) != len(results):
        raise ValueError("contact_sheet needs one result per image")
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    scales = [256 / max(img.size) if scale is None else scale for img in images]
    font = ImageFont.load_default()
    cells = [(_boxed_tile(image, result, image_scale, font), f"{result.prompt} [{result.reason}]",
              _border(result.correct)) for image, result, image_scale in zip(images, results, scales)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(captioned_grid(cells, columns, text_lines=4), path)
    return path


_PASS, _FAIL, _UNJUDGED = (0, 170, 0), (210, 0, 0), (160, 160, 160)


def _border(holds: bool | None) -> tuple:
    """A verdict's frame colour: green where it holds, red where not, grey without a verdict."""
    return _UNJUDGED if holds is None else _PASS if holds else _FAIL


def captioned_grid(cells: Sequence[tuple[Image.Image, str, tuple]], columns: int, text_lines: int) -> Image.Image:
    """``(picture, caption, border colour)`` cells in rows of ``columns``: each picture framed in its
    colour, its caption wrapped underneath (at most ``text_lines`` lines)."""
    font = ImageFont.load_default()
    border, line_height = 4, 12
    cell_w = max(picture.width for picture, _, _ in cells) + 2 * border
    cell_h = max(picture.height for picture, _, _ in cells) + 2 * border + text_lines * line_height + 4
    columns = max(1, min(columns, len(cells)))
    sheet = Image.new("RGB", (columns * cell_w, math.ceil(len(cells) / columns) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars_per_line = max(8, int(cell_w / 6.5))
    for i, (picture, caption, edge) in enumerate(cells):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        draw.rectangle([x0, y0, x0 + picture.width + 2 * border - 1, y0 + picture.height + 2 * border - 1], fill=edge)
        sheet.paste(picture, (x0 + border, y0 + border))
        for k, line in enumerate(textwrap.wrap(caption, chars_per_line)[:text_lines]):
            draw.text((x0 + 2, y0 + picture.height + 2 * border + 2 + k * line_height), line, fill=(0, 0, 0),
                      font=font)
    return sheet


def overview_sheet(tiles: Sequence[tuple[Image.Image, str, bool | None]], columns: int = 4,
                   height: int = 160) -> Image.Image:
    """``(picture, caption, holds)`` tiles scaled to ``height`` px in one grid: a green border where a
    judge found the prompt's relations, red where it did not, grey where nothing judged."""
    cells = [(_scaled_to(picture, height), caption, _border(holds)) for picture, caption, holds in tiles]
    return captioned_grid(cells, columns, text_lines=2)


def _scaled_to(picture: Image.Image, height: int) -> Image.Image:
    """Enlarged by pixel repetition (crisp shapes), shrunk by averaging (readable labels)."""
    size = (max(1, round(picture.width * height / picture.height)), height)
    return picture.resize(size, Image.NEAREST if height >= picture.height else Image.BOX)


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


def probability_plot(records: Sequence, width: int = 480, height: int = 260) -> Image.Image:
    """A PNG-ready PIL plot of p(target relation) over the steering iterations, one curve per image.

    The x axis is divided into the steered denoising steps (labelled, shaded alternately), each
    holding that step's refinement iterations; colours tell images apart, marker shapes relations.
    ``records`` are steering diagnostics records (``step``, ``relation``, ``target_probability``
    with one value per image). Drawn with PIL only.
    """
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 38, width - 12, 22, height - 40
    draw.text((left, 4), "p(target relation) while steering", fill="black")
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - value * (bottom - top)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{value:.2f}", fill="black")
    records = list(records)
    xs = [left + (right - left) * (k + 0.5) / max(len(records), 1) for k in range(len(records))]
    _step_axis(draw, records, xs, (left, right, top, bottom))
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text((left, height - 14), "denoising step (refinement iterations within each step)", fill=(90, 90, 90))
    images = len(records[0].target_probability) if records else 0
    for relation in sorted({r.relation for r in records}):
        for index in range(images):
            points = [(x, bottom - float(r.target_probability[index]) * (bottom - top))
                      for x, r in zip(xs, records) if r.relation == relation]
            _curve(draw, points, LINE_COLOURS[index % len(LINE_COLOURS)], relation)
    _legend(draw, images, len({r.relation for r in records}), right, bottom)
    return image


def _step_axis(draw: ImageDraw.ImageDraw, records: list, xs: list[float], box: tuple) -> None:
    """Shade every other step's iterations and label each step under the axis."""
    left, right, top, bottom = box
    spans: list[list] = []                      # [step, first x, last x]
    for x, r in zip(xs, records):
        if spans and spans[-1][0] == r.step:
            spans[-1][2] = x
        else:
            spans.append([r.step, x, x])
    half = (right - left) / max(len(records), 1) / 2
    every = max(1, len(spans) // 12)            # at most ~12 labels
    for k, (step, first, last) in enumerate(spans):
        if k % 2:
            draw.rectangle([first - half, top, last + half, bottom], fill=(244, 244, 250))
        draw.line([first - half, bottom, first - half, bottom + 4], fill=(120, 120, 120))
        if k % every == 0:
            draw.text(((first + last) / 2 - 4, bottom + 6), str(step), fill="black")


def _curve(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour, relation: int) -> None:
    if len(points) > 1:
        draw.line(points, fill=colour, width=2)
    for x, y in points:
        _marker(draw, x, y, colour, relation)


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, colour, relation: int) -> None:
    """Relation 0: disc, 1: square, 2: triangle, then again."""
    shape, r = relation % 3, 2.5
    if shape == 0:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif shape == 1:
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    else:
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=colour)


def _legend(draw: ImageDraw.ImageDraw, images: int, relations: int, right: float, bottom: float) -> None:
    """Bottom right, where curves that rise rarely are."""
    entries = [(f"image {k + 1}", LINE_COLOURS[k % len(LINE_COLOURS)], 0) for k in range(min(images, 8))]
    if relations > 1:
        entries += [(f"relation {k + 1}", (90, 90, 90), k) for k in range(relations)]
    for row, (label, colour, relation) in enumerate(entries):
        y = bottom - 8 - (len(entries) - 1 - row) * 12
        _marker(draw, right - 70, y, colour, relation)
        draw.text((right - 62, y - 6), label, fill=colour)


def side_by_side(left, right, min_side: int = 256):
    """The unsteered and steered images side by side, enlarged to at least ``min_side`` pixels."""
    scale = max(1, -(-min_side // max(left.width, left.height)))
    a = left.resize((left.width * scale, left.height * scale), Image.NEAREST)
    b = right.resize((right.width * scale, right.height * scale), Image.NEAREST)
    pad, label = 8, 18
    sheet = Image.new("RGB", (a.width + b.width + 3 * pad, a.height + 2 * pad + label), "white")
    sheet.paste(a, (pad, pad + label))
    sheet.paste(b, (2 * pad + a.width, pad + label))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), "unsteered", fill="black")
    draw.text((2 * pad + a.width, 4), "steered", fill="black")
    return sheet
