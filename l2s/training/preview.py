"""``preview.png`` of a map dataset: a look at what its dual inversions recorded.

One row per sample, the first :data:`PREVIEW_SAMPLES` committed (in commit order): the source image
as inverted, then the subject's and the object's attention at the last stored step (the mean of its
maps over the channels) over it, for the true-word prompt and, in a dual dataset, the wrong-word
one. Drawn from the committed shards alone, so a resumed dataset's preview is an uninterrupted one's.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from l2s.evaluation.attention_pictures import overlay
from l2s.evaluation.pictures import captioned_grid
from l2s.evaluation.records import save_png
from .inversion_utils import square_image
from .reader import stored_maps
from .samples import Skip, load_image
from .sources import RelationSample
from .store import PREVIEW_FILE

PREVIEW_SAMPLES = 8
_CELL = 128                    # px per picture: a caption of ~20 characters a line fits under it
_EDGE = (170, 170, 170)        # nothing is judged here: every picture framed alike
_PROMPTS = (("pos", "true"), ("neg", "wrong"))


def write_preview(out_dir: Path, rows: Sequence[dict], samples: Sequence[RelationSample], meta: dict) -> Path | None:
    """Draw ``out_dir/preview.png`` from the committed manifest ``rows`` (:func:`.store.committed_rows`)
    and the ``samples`` that made them (their images); None, and no picture left, when there is no row."""
    path = out_dir / PREVIEW_FILE
    step = max(meta["store_steps"])
    chosen = first_samples(rows, step)
    if not chosen:
        path.unlink(missing_ok=True)
        return None
    by_key = {sample.key: sample for sample in samples}
    handles: dict = {}
    cells = []
    for key, prompts in chosen.items():
        image = _source_image(by_key.get(key), meta["settings"]["size"], meta["model_family"].startswith("sd"))
        cells += _row_cells(out_dir, image, prompts, handles)
    grid = captioned_grid(cells, columns=len(cells) // len(chosen), text_lines=4)
    save_png(_titled(grid, _title(len(chosen), step, meta)), path)
    return path


def first_samples(rows: Sequence[dict], step: int) -> dict[str, dict[str, dict]]:
    """sample key -> prompt type -> its row at ``step``, for the first :data:`PREVIEW_SAMPLES` samples."""
    chosen: dict[str, dict[str, dict]] = {}
    for row in rows:
        key = row.get("sample_key")
        if int(row["timestep"]) == step and (key in chosen or len(chosen) < PREVIEW_SAMPLES):
            chosen.setdefault(key, {})[row["prompt_type"]] = row
    return chosen


def _source_image(sample: RelationSample | None, size: int, center_crop: bool) -> Image.Image:
    """The image as it was inverted, at most :data:`_CELL` px; grey when it cannot be read now."""
    try:
        image = square_image(load_image(sample), size, center_crop) if sample is not None else None
    except Skip:      # gone or changed since its chunk was committed: the maps still show
        image = None
    if image is None:
        return Image.new("RGB", (_CELL, _CELL), (128, 128, 128))
    return image if image.width <= _CELL else image.resize((_CELL, _CELL), Image.BOX)


def _row_cells(out_dir: Path, image: Image.Image, prompts: dict[str, dict], handles: dict) -> list[tuple]:
    """The image captioned with the true prompt and label, then per prompt its subject's and object's map."""
    maps = {kind: stored_maps(out_dir, row, handles).mean(dim=1).clamp(min=0).numpy()
            for kind, row in prompts.items()}
    scale = max(float(np.max(m)) for m in maps.values())   # one scale: the prompts' maps compare
    first = prompts.get("pos") or next(iter(prompts.values()))
    cells = [(image.resize((_CELL, _CELL), Image.NEAREST), f"[{first['label']}] {first['prompt']}", _EDGE)]
    for kind, said in _PROMPTS:
        row = prompts.get(kind)
        if row is None:
            continue
        quality = f" ({row['psnr']:.1f} dB)"        # said once per prompt, under its subject
        for index, phrase in enumerate((row["subject"], row["object"])):
            caption = f"{said} '{row['relation_word']}'{quality if index == 0 else ''}: {phrase}"
            cells.append((overlay(image, maps[kind][index], scale, _CELL), caption, _EDGE))
    return cells


def _title(samples: int, step: int, meta: dict) -> str:
    wrong = " and with a wrong one" if meta["settings"].get("dual", True) else ""
    return (f"The first {samples} samples at step index {step} of {meta['num_steps']}: the image as inverted, then "
            f"the subject's and the object's attention (mean of {meta['channels']} maps; bright = attended) with the "
            f"true relation word{wrong}, each inversion's reconstruction PSNR in dB; a row's maps share one "
            "brightness scale")


def _titled(grid: Image.Image, title: str) -> Image.Image:
    """``grid`` under ``title``, wrapped to its width."""
    font, line_height = ImageFont.load_default(), 12
    lines = textwrap.wrap(title, max(20, grid.width // 7))
    sheet = Image.new("RGB", (grid.width, grid.height + line_height * len(lines) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, line in enumerate(lines):
        draw.text((4, 4 + k * line_height), line, fill=(0, 0, 0), font=font)
    sheet.paste(grid, (0, line_height * len(lines) + 8))
    return sheet
