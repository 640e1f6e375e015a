"""The bench's prompts without a relation: what fine-tuning for placement may take from the model.

"a red circle and a blue square", worded like the shapes model's training captions. Nothing is
steered (there is no relation to steer to), so the row measures the model itself (a tuned one
with ``--lora``): each object found with its colour and shape, found by colour alone, and how
much the objects' places vary across seeds (a model tuned to put things in fixed places loses
that spread). Images are PNGs in ``out/no_relation`` (a rerun skips the ones made); spread over
the processes of ``torchrun`` / ``accelerate launch`` like the other parts.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from l2s.distributed import world
from l2s.errors import L2SError
from l2s.evaluation.records import save_png
from l2s.files import atomic_write_json

from .scenes import COLOURS, SHAPES

KEY, LABEL = "no_relation", "two objects, no relation (what tuning may cost)"


def plain_prompts(n: int, prompt_seed: int = 0) -> list[tuple[str, tuple[str, str]]]:
    """``n`` distinct (prompt, (object, object)) pairs, distinct colours, like the training captions."""
    if n > math.perm(len(COLOURS), 2) * len(SHAPES) ** 2:
        raise L2SError(f"asked for {n} distinct prompts without a relation; the shapes world has fewer")
    colours, rng, drawn = list(COLOURS), np.random.default_rng([prompt_seed, 17]), {}
    while len(drawn) < n:   # every colour and shape, as the two-object part's prompts
        a, b = (f"{colours[c]} {SHAPES[int(rng.integers(len(SHAPES)))]}"
                for c in rng.choice(len(colours), size=2, replace=False))
        drawn.setdefault(f"a {a} and a {b}", (a, b))
    return list(drawn.items())


def run_plain_part(steerer, detector, prompts: Sequence[tuple[str, tuple[str, str]]], seeds: Sequence[int],
                   out: Path, batch_size: int, settings: dict | None = None, progress: bool = True) -> dict:
    """Generate (or reuse) every prompt x seed image unsteered and measure the row; ``settings``
    (model, adapter, sampling) are recorded, and images made with other ones are never reused.
    ``progress``: one bar over the images (none per image)."""
    from tqdm.auto import tqdm

    folder = Path(out) / KEY
    folder.mkdir(parents=True, exist_ok=True)
    world().on_main(lambda: _claim(folder, settings or {}))
    jobs = [(i, seed, folder / f"{i:04d}-{seed:05d}.png") for i in range(len(prompts)) for seed in seeds]
    group = world()
    missing = [job for job in group.share(jobs) if not job[2].is_file()]
    shown = progress and group.is_main and bool(missing)   # a finished part draws no empty bar
    with tqdm(total=len(missing), desc=group.bar_label("no relation"), unit="img", disable=not shown) as bar:
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            result = steerer([prompts[i][0] for i, _, _ in chunk], seed=[seed for _, seed, _ in chunk], steer=False,
                             progress=False)
            for (_, _, png), image in zip(chunk, result.images):
                save_png(image, png)
            bar.update(len(chunk))
    group.barrier()
    return plain_scores(detector, prompts, seeds, folder)


def _claim(folder: Path, settings: dict) -> None:
    path = folder / "settings.json"
    settings = json.loads(json.dumps(settings))   # as stored
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise L2SError(f"{folder} holds images made with other settings ({', '.join(changed)}); "
                           "use another --out, or the same settings to resume it")
    else:
        atomic_write_json(path, settings)


def plain_scores(detector, prompts, seeds: Sequence[int], folder: Path) -> dict:
    """Objects found (colour + shape; colour alone) and the spread of their centres across seeds."""
    found = colour_found = total = 0
    spreads = []
    for i, (_, objects) in enumerate(prompts):
        centres: dict[str, list] = {label: [] for label in objects}
        for seed in seeds:
            with Image.open(folder / f"{i:04d}-{seed:05d}.png") as image:
                image = image.convert("RGB")
                strict = detector.detect(image, list(objects))
                colours = detector.detect(image, [label.split()[0] for label in objects])
                size = image.size
            for label in objects:
                total += 1
                found += strict[label] is not None
                hit = colours[label.split()[0]]
                colour_found += hit is not None
                if hit is not None:
                    x0, y0, x1, y1 = hit.box
                    centres[label].append(((x0 + x1) / 2 / size[0], (y0 + y1) / 2 / size[1]))
        spreads += [float(np.std(np.asarray(c), axis=0).mean()) for c in centres.values() if len(c) >= 2]
    return {"n_prompts": len(prompts), "seeds": list(seeds), "n_objects": total,
            "objects_found": found / total if total else 0.0, "colours_found": colour_found / total if total else 0.0,
            "position_spread": float(np.mean(spreads)) if spreads else None}
