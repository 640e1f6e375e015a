"""Steered accuracy of a shapes model per steering step size (and sampling guidance), on
development prompts (never the bench's). Prints one table.

    python experiments/scripts/shapes_step_size.py --model DIR --classifier DIR --step-sizes 5,0.5,1,1.5,2,3
    python experiments/scripts/shapes_step_size.py --step-sizes 1 --true-cfg 1,2

This is how `l2s.shapes.SHAPES_STEP_SIZE` was examined, and `SHAPES_TRUE_CFG` steered
(prompt seed 7, 48 two-object prompts, image seeds 0-1, the reference schedule: 16 iterations on
steps 0-5 of 12; only the step size, or the plain steps' true CFG scale, changes). Rows are every
step size with every guidance scale; the first row is the reference. Per image: **strict**
(GenEval rule, colour + shape), **colour** (the rule on the colour blobs) and whether every object
was found in its colour and shape; the same (prompt, seed) pairs under each setting are compared
with the first one by a sign test.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))   # shapes_verdicts.py beside it


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="shapes pipeline dir (default: the shipped model)")
    p.add_argument("--classifier", type=Path, help="dual classifier dir (default: the shipped one)")
    p.add_argument("--step-sizes", default="5,1", help="step sizes to compare; the first is the reference")
    p.add_argument("--true-cfg", help="true CFG scales of the plain steps, 1 = none (default: the shapes "
                   "world's, SHAPES_TRUE_CFG)")
    p.add_argument("--prompt-seed", type=int, default=7)
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--seeds", type=int, default=2, help="image seeds 0..N-1")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from l2s.shapes import shapes_position_prompts
    from l2s.evaluation import paired_comparison
    from l2s.shapes import ShapesDetector
    from l2s.errors import L2SError
    from shapes_verdicts import image_verdicts

    from l2s.shapes import SHAPES_TRUE_CFG, VERDICTS, load_shapes_steerer

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = shapes_position_prompts(n=args.prompts, seed=args.prompt_seed)
    scales = args.true_cfg.split(",") if args.true_cfg else [SHAPES_TRUE_CFG]
    settings = [(float(step), float(cfg)) for step in args.step_sizes.split(",") for cfg in scales]
    for flag, folder, marker in (("--model", args.model, "model_index.json"),
                                 ("--classifier", args.classifier, "config.json")):
        if folder is not None and not (folder / marker).is_file():   # before the progress bar: one line
            p.exit(2, f"{p.prog}: error: {flag} {folder}: no such folder ({marker} missing)\n")
    detector = ShapesDetector()
    results: dict[tuple[float, float], dict[str, dict[str, bool]]] = {}
    for step_size, cfg in tqdm(settings, desc="settings"):
        try:    # a missing or damaged model or classifier folder: one line, not a traceback
            steerer = load_shapes_steerer(args.model, args.classifier, step_size=step_size, true_cfg_scale=cfg)
        except L2SError as error:
            p.exit(2, f"{p.prog}: error: {error}\n")
        verdicts = {f"{i}/{seed}": image_verdicts(detector, steerer(spec.prompt, seed=seed, progress=False).images[0],
                                                  spec)
                    for i, spec in enumerate(specs) for seed in range(args.seeds)}
        results[step_size, cfg] = {m: {k: v[m] for k, v in verdicts.items()} for m in VERDICTS}
    reference = results[settings[0]]
    name = "step size {:g}, true CFG {:g}".format
    columns = (f"{m} (vs {name(*settings[0])}: only here / only there, p)" for m in VERDICTS)
    print("| setting | " + " | ".join(columns) + " |")
    print("|---" * (1 + len(VERDICTS)) + "|")
    for setting in settings:
        cells = []
        for m in VERDICTS:
            by_image = results[setting][m]
            cell = f"{sum(by_image.values()) / len(by_image):.3f} ({sum(by_image.values())}/{len(by_image)})"
            if setting != settings[0]:
                c = paired_comparison(by_image, reference[m])
                cell += f" {c.a_only} / {c.b_only}, p = {c.p_value:.3g}"
            cells.append(cell)
        print(f"| {name(*setting)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
