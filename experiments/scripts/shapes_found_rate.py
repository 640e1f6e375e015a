"""How often the shapes model draws every object of a prompt in its colour and shape, per sampling
guidance (unsteered images; development prompts, never the bench's). Prints four tables: every
object of the prompt found, the objects found per shape (which shapes the model cannot draw), what
the missed objects were drawn as (the shape of the largest blob of their colour, or no blob), and
the unsteered (base) relation accuracy, by colour and strict (how well the model already places
objects from the caption alone: the shapes world's targets want it low).

    python experiments/scripts/shapes_found_rate.py --true-cfg 1,1.5,2 --seeds 5

Several models (`--model DIR,DIR` or `shipped`) are sampled on the same images and paired
row by row against the first (model, guidance) row:

    python experiments/scripts/shapes_found_rate.py --model shipped,/path/to/candidate --true-cfg 2 --seeds 2

This is how `l2s.shapes.SHAPES_TRUE_CFG` was examined (prompt seeds 7 and 8, 48 prompts
each; image seeds 0-4 on the stage-3 model, 0-2 on stage 5, which ships with 2). Images come from
`l2s.pipelines.FluxSteeringPipeline` with steering off, one per (prompt, seed); the same (prompt,
seed) pairs under each guidance are compared with a sign test.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))   # shapes_verdicts.py beside it


def judge_unsteered(steerer, specs, seeds, detector, steps: int | None = None):
    """Sample one unsteered image per (prompt, seed) and judge it. Returns ``(found, verdicts, missed)``,
    each keyed ``"prompt/seed"``: {object label: detected with its colour and shape}, the image's
    :data:`l2s.shapes.VERDICTS` (strict, colour, found), and {missed label: :func:`drawn_as`}."""
    from shapes_verdicts import image_verdicts

    from l2s.shapes import objects_found

    found, verdicts, missed = {}, {}, {}
    for index, spec in enumerate(specs):
        for seed in seeds:
            image = steerer(spec.prompt, seed=seed, steer=False, progress=False, num_inference_steps=steps).images[0]
            key = f"{index}/{seed}"
            found[key] = objects_found(detector, image, spec)
            verdicts[key] = image_verdicts(detector, image, spec)
            misses = [label for label, ok in found[key].items() if not ok]
            classes = detector.classify_pixels(image) if misses else None  # once per image, not per miss
            missed[key] = {label: drawn_as(detector, classes, label) for label in misses}
    return found, verdicts, missed


NO_BLOB = "no blob"


def drawn_as(detector, classes, label: str) -> str:
    """What a missed ``"<colour> <shape>"`` object was drawn as, given the image's pixel classes
    (``detector.classify_pixels``): the best-matching shape of the largest blob of its colour, or
    :data:`NO_BLOB` when the image has none (small specks do not count)."""
    colour, _ = detector.parse_label(label)
    blobs = detector.components(classes, colour)
    if not blobs:
        return NO_BLOB
    _, ious, _ = max(blobs, key=lambda blob: blob[2])
    return max(ious, key=ious.get)


def missed_by_shape(missed: dict[str, dict[str, str]], detector) -> dict[str, dict[str, int]]:
    """shape asked for -> {what it was drawn as: count} over the missed objects."""
    counts: dict[str, dict[str, int]] = {}
    for objects in missed.values():
        for label, seen in objects.items():
            shape = detector.parse_label(label)[1]
            counts.setdefault(shape, {})
            counts[shape][seen] = counts[shape].get(seen, 0) + 1
    return counts


def found_by_shape(found: dict[str, dict[str, bool]], detector, shapes) -> dict[str, tuple[int, int]]:
    """shape -> (objects of that shape found, objects of that shape asked for)."""
    counts = {shape: [0, 0] for shape in shapes}
    for objects in found.values():
        for label, ok in objects.items():
            shape = detector.parse_label(label)[1]
            counts[shape][0] += ok
            counts[shape][1] += 1
    return {shape: (hit, total) for shape, (hit, total) in counts.items() if total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="", help="shapes pipeline dirs, comma-separated, compared on the same "
                                               "images (default: the shipped model; 'shipped' names it in a list)")
    p.add_argument("--true-cfg", default="1,1.5,2", help="guidance scales to compare")
    p.add_argument("--prompt-seeds", default="7,8")
    p.add_argument("--prompts-per-seed", type=int, default=48)
    p.add_argument("--seeds", type=int, default=5, help="image seeds 0..N-1")
    p.add_argument("--steps", type=int, help="sampling steps (default: the shapes world's, SHAPES_STEPS)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from l2s.shapes import shapes_position_prompts
    from l2s.evaluation import paired_comparison
    from l2s.shapes import SHAPES, ShapesDetector
    from l2s.shapes import load_shapes_steerer
    from l2s.errors import L2SError

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [spec for seed in args.prompt_seeds.split(",")
             for spec in shapes_position_prompts(n=args.prompts_per_seed, seed=int(seed))]
    models = [name.strip() for name in args.model.split(",")] if args.model else ["shipped"]
    scales = [float(s) for s in args.true_cfg.split(",")]
    rows = [(model, scale) for model in models for scale in scales]  # the first row is the reference
    for model in models:   # before the progress bar: a missing folder is one line
        if model != "shipped" and not (Path(model) / "model_index.json").is_file():
            p.exit(2, f"{p.prog}: error: no shapes-world pipeline at {model} (model_index.json missing)\n")
    detector = ShapesDetector()
    results, by_shape, verdicts, missed = {}, {}, {}, {}
    for model, scale in tqdm(rows, desc="model x guidance"):
        try:    # a missing or damaged model folder: one line, not a traceback
            steerer = load_shapes_steerer(None if model == "shipped" else Path(model), true_cfg_scale=scale)
        except L2SError as error:
            p.exit(2, f"{p.prog}: error: {error}\n")
        objects, verdicts[model, scale], misses = judge_unsteered(steerer, specs, range(args.seeds), detector,
                                                                  args.steps)
        results[model, scale] = {key: all(found.values()) for key, found in objects.items()}
        by_shape[model, scale] = found_by_shape(objects, detector, SHAPES)
        missed[model, scale] = missed_by_shape(misses, detector)

    def name(row, between: str = " | ") -> str:
        return f"{row[0]}{between}{row[1]:g}" if len(models) > 1 else f"{row[1]:g}"

    head = "model | true CFG" if len(models) > 1 else "true CFG"
    rule = "---|---" if len(models) > 1 else "---"
    versus = name(rows[0], " at CFG ")

    def rate_and_pairing(by_image: dict[str, bool], reference: dict[str, bool], first: bool) -> str:
        rate = f"{sum(by_image.values()) / len(by_image):.3f} ({sum(by_image.values())}/{len(by_image)})"
        if first:
            return f"{rate} | - | -"
        c = paired_comparison(by_image, reference)
        return f"{rate} | {c.a_only} / {c.b_only} | {c.p_value:.3g}"

    print(f"| {head} | all objects found | vs {versus}: only here / only there | sign test p |")
    print(f"|{rule}|---|---|---|")
    for row in rows:
        print(f"| {name(row)} | {rate_and_pairing(results[row], results[rows[0]], row == rows[0])} |")
    shapes = [shape for shape in SHAPES if shape in by_shape[rows[0]]]
    print()
    print(f"| {head} | " + " | ".join(f"{shape} found" for shape in shapes) + " |")
    print(f"|{rule}|" + "---|" * len(shapes))
    for row in rows:
        cells = [f"{hit / total:.3f} ({hit}/{total})" for hit, total in (by_shape[row][s] for s in shapes)]
        print(f"| {name(row)} | " + " | ".join(cells) + " |")
    print()
    seen_as = [*SHAPES, NO_BLOB]
    print(f"| {head} | missed objects: shape asked for | " + " | ".join(f"drawn as {s}" for s in seen_as) + " |")
    print(f"|{rule}|---|" + "---|" * len(seen_as))
    for row in rows:
        for shape in shapes:
            counts = missed[row].get(shape, {})
            print(f"| {name(row)} | {shape} | " + " | ".join(str(counts.get(s, 0)) for s in seen_as) + " |")
    print()
    print(f"| {head} | base colour accuracy | only here / only there | sign test p "
          f"| base strict accuracy | only here / only there | sign test p |")
    print(f"|{rule}|---|---|---|---|---|---|")
    for row in rows:
        cells = [rate_and_pairing({key: v[verdict] for key, v in verdicts[row].items()},
                                  {key: v[verdict] for key, v in verdicts[rows[0]].items()}, row == rows[0])
                 for verdict in ("colour", "strict")]
        print(f"| {name(row)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
