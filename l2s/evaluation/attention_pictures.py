"""Pictures of what steering sees: each object's cross-attention map over the image, before and
after steering, one labelled grid per steered step (PIL only)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .records import save_png

# A perceptually ordered dark-to-bright ramp (close to matplotlib's "inferno"): bright = attended.
_RAMP = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                  (250, 193, 39), (252, 255, 164)], dtype=np.float32)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] -> RGB float32 colours of the ramp, shape ``values.shape + (3,)``."""
    position = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def overlay(image: Image.Image, attention: np.ndarray, scale: float, size: int) -> Image.Image:
    """``image`` enlarged to ``size`` px with ``attention`` (h, w; divided by ``scale``, so several
    maps share one brightness scale) laid over it: the more attention, the more opaque."""
    base = np.asarray(image.convert("RGB").resize((size, size), Image.NEAREST), dtype=np.float32)
    field = Image.fromarray((attention / max(scale, 1e-12)).astype(np.float32), mode="F")
    values = np.asarray(field.resize((size, size), Image.BILINEAR), dtype=np.float32).clip(0, 1)
    alpha = (0.1 + 0.8 * values)[..., None]
    blended = base * (1 - alpha) + heat_colours(values) * alpha
    return Image.fromarray(blended.round().astype(np.uint8))


def attention_grid(image: Image.Image, step: int, phrases: Sequence[str], before: np.ndarray,
                   after: np.ndarray, note: str = "", cell: int = 160) -> Image.Image:
    """One step's grid: a row per object, its map before and after steering over ``image``.

    ``before`` / ``after`` are ``(objects, h, w)``; each object's two maps share one brightness
    scale (their joint maximum), so a map that gathers attention gets brighter. ``note`` is
    printed under the title (e.g. the target probability).
    """
    font = ImageFont.load_default()
    pad, label_w, title_h, head_h = 8, 96, 34 if note else 20, 16
    width = label_w + 3 * (cell + pad) + pad
    height = title_h + head_h + len(phrases) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), f"denoising step {step}: cross-attention of each object (bright = attended)",
              fill="black", font=font)
    if note:
        draw.text((pad, 18), note, fill=(80, 80, 80), font=font)
    x0 = label_w + pad
    for k, heading in enumerate(("image", "before steering", "after steering")):
        draw.text((x0 + k * (cell + pad), title_h), heading, fill="black", font=font)
    for row, phrase in enumerate(phrases):
        y = title_h + head_h + row * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), _fit(phrase, 15), fill="black", font=font)
        scale = float(max(before[row].max(), after[row].max()))
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (x0, y))
        sheet.paste(overlay(image, before[row], scale, cell), (x0 + cell + pad, y))
        sheet.paste(overlay(image, after[row], scale, cell), (x0 + 2 * (cell + pad), y))
    return sheet


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 3] + "..."


def save_attention_grids(image: Image.Image, steps: Sequence, folder: str | Path, image_index: int = 0,
                         notes: dict[int, str] | None = None) -> list[Path]:
    """``folder/step_NN.png`` for every recorded step (``l2s.pipelines.attention_maps.StepMaps``),
    the maps of image ``image_index`` over ``image``; ``notes`` per step go under the titles."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("step_*.png"):     # a run with other steered steps leaves none behind
        stale.unlink()
    paths = []
    for maps in steps:
        grid = attention_grid(image, maps.step, maps.phrases, maps.before[image_index].numpy(),
                              maps.after[image_index].numpy(), (notes or {}).get(maps.step, ""))
        path = folder / f"step_{maps.step:02d}.png"
        save_png(grid, path)
        paths.append(path)
    return paths


def step_notes(records: Sequence, image_index: int = 0) -> dict[int, str]:
    """Per steered step, the target probability of image ``image_index`` at the step's first and
    last refinement iteration, per relation (from steering diagnostics records)."""
    first: dict[tuple[int, int], float] = {}
    last: dict[tuple[int, int], float] = {}
    for r in records:
        first.setdefault((r.step, r.relation), r.target_probability[image_index])
        last[(r.step, r.relation)] = r.target_probability[image_index]
    notes: dict[int, list[str]] = {}
    for (step, relation), p in first.items():
        notes.setdefault(step, []).append(f"relation {relation + 1}: p(target) {p:.2f} -> "
                                          f"{last[(step, relation)]:.2f}")
    return {step: "; ".join(parts) + " (first -> last evaluated iteration)" for step, parts in notes.items()}
