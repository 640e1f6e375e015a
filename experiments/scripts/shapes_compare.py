"""Compare two shapes-world bench results image for image (sign test), part by part.

    python experiments/scripts/shapes_compare.py NEW.json OLD.json

Both files are `l2s shapes bench --results` JSONs. Images are paired by their "prompt/seed" key,
so the two runs must have used the same prompt seed and counts (the bench's defaults do); every
part and mode present in both is compared on the strict (colour and shape) and colour metrics,
and on "found" (every object found in its colour and shape) where both files record it, except
the copies: a part that only steers (the ablation, the presets) carries the two-object
part's base and reference-dual images of its prompts ("base", "reference_dual"), which are compared
once, under "position".
This is how a candidate model is held against the shipped one (`experiments/notebook/candidates.md`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = (("strict", "correct_by_image"), ("colour", "colour_correct_by_image"),
           # every object of the prompt found in its colour and shape (results since 2026-11-30)
           ("found", "objects_found_by_image"))
# Results written before the bench recorded "copied_modes" carry "reference_dual" only where the
# part copied both of these from "position".
COPIED_MODES = ("base", "reference_dual")


def compare_results(new: dict, old: dict) -> list[dict]:
    """One row per (part, mode, metric) present in both results: the paired comparison, new vs old."""
    from l2s.evaluation import paired_comparison

    if new["settings"].get("seeds") != old["settings"].get("seeds"):
        raise ValueError(f"the runs used different image seeds ({new['settings'].get('seeds')} vs "
                         f"{old['settings'].get('seeds')}): their images cannot be paired")
    old_parts = {part["key"]: part for part in old["parts"]}
    rows = []
    for part in new["parts"]:
        other = old_parts.get(part["key"])
        if other is None:
            continue
        if part["n_prompts"] != other["n_prompts"]:
            raise ValueError(f"part {part['key']!r}: {part['n_prompts']} vs {other['n_prompts']} prompts; "
                             "the runs did not use the same prompts")
        copies = part.get("copied_modes", COPIED_MODES if "reference_dual" in part["modes"] else ())
        for mode, verdicts in part["modes"].items():
            if mode not in other["modes"] or mode in copies:
                continue
            for metric, field in METRICS:
                if field not in verdicts or field not in other["modes"][mode]:
                    continue  # older results lack the per-image found verdicts
                c = paired_comparison(verdicts[field], other["modes"][mode][field])
                rows.append({"part": part["key"], "mode": mode, "metric": metric, **c.to_dict()})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("new", type=Path, help="results JSON of the run under test")
    p.add_argument("old", type=Path, help="results JSON to compare against (e.g. experiments/results/shapes_accuracy.json)")
    args = p.parse_args(argv)
    try:    # a missing or unreadable results file: one line, not a traceback
        new, old = (json.loads(path.read_text()) for path in (args.new, args.old))
    except (OSError, ValueError) as error:
        p.exit(2, f"{p.prog}: error: {error}\n")
    rows = compare_results(new, old)
    if not rows:
        print("no part and mode in common", file=sys.stderr)
        return 1
    print(f"new: {args.new}\nold: {args.old}\n")
    print("| part | mode | metric | pairs | new | old | new only | old only | sign test p |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["n_pairs"]
        print(f"| {r['part']} | {r['mode']} | {r['metric']} | {n} | {r['a_correct'] / n:.3f} | "
              f"{r['b_correct'] / n:.3f} | {r['a_only']} | {r['b_only']} | {r['p_value']:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
