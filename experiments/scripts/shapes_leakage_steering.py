"""Dual-inversion vs pos-only classifier *in steering*, per schedule, image for image. Prints one
table (and writes it with ``--results``).

    python experiments/scripts/shapes_leakage_steering.py --schedules early-exit,fast                 # development
    python experiments/scripts/shapes_leakage_steering.py --schedules reference --multi 3,2          # 3 objects, 2 relations
    python experiments/scripts/shapes_leakage_steering.py --schedules fast --prompt-seed 0 --prompts 100 \\
        --seeds 100,101,102,103 --results experiments/results/shapes_leakage_steering.md     # held out

Why schedules: the leakage argument says a classifier trained only on maps whose relation word
is right reads the word back, so on a generated image it reports the prompted relation as more
likely than the layout supports. With the reference schedule (16 iterations on every steered
step) that bias barely matters: both classifiers push until the step ends. A schedule that stops
a step once p(target) >= 0.9 (``early-exit``, ``fast``) trusts the classifier's confidence, so a
classifier that is confident too early steers less. Per image: the verdicts of
:func:`shapes_verdicts.image_verdicts`, the number of classifier evaluations (forward+backward)
the loop ran, and p(target) at the first one. Each pos-only row is compared with the dual row of
the same schedule on the same (prompt, seed) images by a sign test.

With ``--results``, each image's record is appended to ``<results>.partial.jsonl`` as it is
judged, so an interrupted run started again with the same arguments skips the images it already
has (and refuses a partial file written with other settings); the file is removed once the
results are written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))   # shapes_verdicts.py beside it

CLASSIFIERS = ("dual", "pos_only")


def steer_and_judge(steerer, specs, seeds, schedule, detector, progress=None, done=None,
                    on_image=None) -> dict[str, dict]:
    """Per image ``"prompt/seed"``: verdicts, classifier evaluations, first p(target), seconds.

    Images already in ``done`` are taken from it, not steered again; ``on_image(key, record)`` is
    called for each image steered here."""
    from shapes_verdicts import image_verdicts

    out = {}
    for i, spec in enumerate(specs):
        for seed in seeds:
            key = f"{i}/{seed}"
            if done and key in done:
                out[key] = done[key]
            else:
                start = time.perf_counter()
                result = steerer(spec.prompt, seed=seed, schedule=schedule, progress=False)
                seconds = time.perf_counter() - start
                records = result.diagnostics.records
                out[key] = {**image_verdicts(detector, result.images[0], spec),
                            "evaluations": len(records),
                            "first_p": records[0].target_probability[0] if records else None,
                            "seconds": seconds}
                if on_image is not None:
                    on_image(key, out[key])
            if progress is not None:
                progress.update()
    return out


def table(results: dict[str, dict[str, dict[str, dict]]]) -> list[str]:
    """Markdown rows: one per schedule and classifier; pos-only rows paired with dual."""
    from l2s.evaluation import paired_comparison
    from l2s.shapes import VERDICTS

    def rate(images, key):
        hits = sum(bool(v[key]) for v in images.values())
        return f"{hits / len(images):.3f} ({hits}/{len(images)})"

    header = ["schedule", "classifier", *VERDICTS, "evaluations / image", "first p(target) >= 0.9", "s/image"]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for schedule, by_classifier in results.items():
        for name, images in by_classifier.items():
            cells = []
            for key in VERDICTS:
                cell = rate(images, key)
                if name != "dual" and "dual" in by_classifier:
                    c = paired_comparison({k: v[key] for k, v in by_classifier["dual"].items()},
                                          {k: v[key] for k, v in images.items()})
                    cell += f"; dual only {c.a_only}, {name} only {c.b_only}, p = {c.p_value:.3g}"
                cells.append(cell)
            n = len(images)
            confident = sum(v["first_p"] is not None and v["first_p"] >= 0.9 for v in images.values())
            cells += [f"{sum(v['evaluations'] for v in images.values()) / n:.1f}", f"{confident}/{n}",
                      f"{sum(v['seconds'] for v in images.values()) / n:.2f}"]
            rows.append(f"| {schedule} | {name} | " + " | ".join(cells) + " |")
    return rows


class PartialResults:
    """The per-image records of an unfinished run, one JSON line each after a settings line."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.done: dict[tuple[str, str], dict[str, dict]] = {}
        if path.exists():
            lines = path.read_text().splitlines()
            if not lines or json.loads(lines[0]) != json.loads(json.dumps({"settings": settings})):
                raise SystemExit(f"{path} was written by a run with other settings; remove it to start afresh")
            kept = lines[:1]
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short when the run was killed
                    continue
                kept.append(line)
                self.done.setdefault((entry["schedule"], entry["classifier"]), {})[entry["image"]] = entry["record"]
            # rewritten without the cut line, so the next record is not appended onto it
            path.write_text("\n".join(kept) + "\n")
        else:
            path.write_text(json.dumps({"settings": settings}) + "\n")

    def recorder(self, schedule: str, classifier: str):
        def record(image: str, verdicts: dict) -> None:
            with self.path.open("a") as f:
                f.write(json.dumps({"schedule": schedule, "classifier": classifier, "image": image,
                                    "record": verdicts}) + "\n")
        return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="shapes pipeline dir (default: the shipped model)")
    p.add_argument("--classifier", type=Path, help="dual classifier dir (default: the shipped one)")
    p.add_argument("--ablation-classifier", type=Path, help="pos-only classifier dir (default: the shipped one)")
    p.add_argument("--schedules", default="early-exit,fast", help="schedule presets (l2s.steer.PRESETS)")
    p.add_argument("--prompt-seed", type=int, default=7, help="7: development prompts; the bench's is 0")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--seeds", default="0,1", help="image seeds, comma-separated (the bench's: 100,101,102,103)")
    p.add_argument("--multi", metavar="OBJECTS,RELATIONS",
                   help="multi-relation prompts (e.g. 3,2 or 4,3) instead of the two-object ones")
    p.add_argument("--results", type=Path, help="also write the table here (and the per-image .json beside it)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from l2s.shapes import shapes_multi_relation_prompts, shapes_position_prompts
    from l2s.errors import L2SError
    from l2s.shapes import ShapesDetector
    from l2s.classifier import RelationClassifier
    from l2s.shapes import load_shapes_pipeline
    from l2s.shapes import named_schedule, shipped_assets, steer_shapes_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    schedules = args.schedules.split(",")
    try:  # before any work: a bad seed, an unknown preset or prompt pattern
        seeds = [int(s) for s in args.seeds.split(",")]
        schedule_of = {name: named_schedule(name) for name in schedules}
        if args.multi:
            counts = [int(n) for n in args.multi.split(",")]
            if len(counts) != 2:
                raise ValueError(f"--multi takes OBJECTS,RELATIONS (e.g. 3,2), got {args.multi!r}")
            n_objects, n_relations = counts
            specs = shapes_multi_relation_prompts(n_objects, n_relations, n=args.prompts, seed=args.prompt_seed)
        else:
            specs = shapes_position_prompts(n=args.prompts, seed=args.prompt_seed)
    except (ValueError, L2SError) as error:
        p.error(str(error))
    assets = shipped_assets()
    classifier_dirs = {"dual": args.classifier or assets.classifier,
                       "pos_only": args.ablation_classifier or assets.ablation_classifier}
    settings = {"model": str(args.model or assets.pipeline),
                "classifiers": {k: str(v) for k, v in classifier_dirs.items()},
                "prompt_seed": args.prompt_seed, "prompts": args.prompts, "seeds": seeds,
                "prompt_set": f"multi {args.multi}" if args.multi else "two objects",
                "schedules": {k: v.to_json() for k, v in schedule_of.items()}}
    partial = PartialResults(args.results.with_suffix(".partial.jsonl"), settings) if args.results else None
    detector = ShapesDetector()
    try:    # once: both classifiers steer the same model; a missing folder is one line, not a traceback
        pipe = load_shapes_pipeline(args.model or assets.pipeline)
        classifiers = {name: RelationClassifier.load(classifier_dirs[name]) for name in CLASSIFIERS}
    except L2SError as error:
        p.exit(2, f"{p.prog}: error: {error}\n")
    results: dict[str, dict[str, dict[str, dict]]] = {name: {} for name in schedules}
    with tqdm(total=len(schedules) * len(CLASSIFIERS) * len(specs) * len(seeds), desc="images") as progress:
        for classifier in CLASSIFIERS:
            steerer = steer_shapes_pipeline(pipe, classifiers[classifier])
            for name in schedules:
                results[name][classifier] = steer_and_judge(
                    steerer, specs, seeds, schedule_of[name], detector, progress,
                    done=partial.done.get((name, classifier)) if partial else None,
                    on_image=partial.recorder(name, classifier) if partial else None)
    rows = table(results)
    print("\n".join(rows))
    if args.results:
        command = "python experiments/scripts/shapes_leakage_steering.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.results.write_text(f"Generated by:\n\n    {command}\n\n" + "\n".join(rows) + "\n")
        args.results.with_suffix(".json").write_text(json.dumps({"settings": settings, "images": results},
                                                                indent=1))
        partial.path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
