"""Remake the pictures of docs/usage.md from the shipped shapes-world model (CPU, a few minutes).

    python scripts/doc_pictures.py                # writes docs/img/*.png
    python scripts/doc_pictures.py --work /tmp/w  # keep the full-size outputs (and reuse the eval run)

Writes attention_maps.png (what steering sees at the first steered step, before and after),
probability.png (the target probability of three images over the steered steps) and
eval_report.png (the top of ``l2s eval``'s report.html, rendered by headless Chromium when it is
installed). PNGs are palette-quantised to stay a few tens of KB.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle to the left of a blue square"


def small_png(image: Image.Image, path: Path, colours: int = 96) -> None:
    """Save ``image`` palette-quantised (docs pictures are diagrams and flat shapes: no visible loss)."""
    image.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    # --out may lie outside the checkout: name the file relative to it only when it is inside
    # (resolved first: a relative --out such as docs/img is inside it too)
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    print(f"{shown}: {path.stat().st_size // 1024} KB")


def steering_pictures(out: Path, work: Path) -> None:
    from l2s.evaluation import probability_plot
    from l2s.evaluation.attention_pictures import (
        attention_grid,
        save_attention_grids,
        step_notes,
    )
    from l2s.pipelines.attention_maps import MapRecorder
    from l2s.shapes import load_shapes_steerer

    steerer = load_shapes_steerer()
    with MapRecorder(steerer) as recorder:
        result = steerer(PROMPT, seed=0, num_images=3, progress=False)
    notes = step_notes(result.diagnostics.records)
    save_attention_grids(result.images[0], recorder.steps, work / "maps", notes=notes)
    first = recorder.steps[0]
    grid = attention_grid(result.images[0], first.step, first.phrases, first.before[0].numpy(),
                          first.after[0].numpy(), notes.get(first.step, ""), cell=128)
    small_png(grid, out / "attention_maps.png")
    small_png(probability_plot(result.diagnostics.records), out / "probability.png", colours=32)


def eval_report_picture(out: Path, work: Path) -> None:
    from l2s.evaluation import run_eval
    from l2s.shapes import ShapesDetector, load_shapes_steerer, shapes_position_prompts

    run = work / "eval"        # rerunning resumes: images already scored are not made again
    run_eval(load_shapes_steerer(), shapes_position_prompts(4, seed=0), ShapesDetector(), run, seeds=[0, 1],
             settings={"model": "shipped shapes model"}, detector_name="shapes", progress=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("eval_report.png: skipped (no chromium to render report.html)", file=sys.stderr)
        return
    shot = work / "report_full.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,1500", (run / "report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=300)
    page = Image.open(shot)
    small_png(page.crop((0, 0, page.width, 1100)).resize((750, 825), Image.LANCZOS), out / "eval_report.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--work", type=Path, help="where the full-size outputs go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-eval", action="store_true", help="only the steering pictures")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        steering_pictures(args.out, work)
        if not args.skip_eval:
            eval_report_picture(args.out, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
