"""Accuracy and steered time vs K (classifiers of the first K blocks), and the rule of
`experiments/notebook/layers-k.md` applied to them. Prints one table; writes it with --results.

    python experiments/scripts/shapes_layers_table.py --reference all=ALL.json --runs k1=K1.json,k2=K2.json \
        --timing TIMING.json --results experiments/results/shapes_layers_k.md

Every bench result (`l2s shapes bench --parts position,multi_3_2 --results ...`) is paired image
for image with the reference one (the shipped all-layers classifier); the timing JSON is
`shapes_layers_timing.py --results`'s. "Best K" is the smallest K with (1) two-object steered
colour accuracy at least the reference's minus 0.01, (2) multi 3/2 steered colour accuracy not
lower with sign test p < 0.05, (3) a steered image faster than the reference's (median CPU s).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

MARGIN = 0.01
ALPHA = 0.05


def _pairs(text: str) -> dict[str, Path]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"expected name=FILE,name=FILE; got {text!r}")
    return {name: Path(path) for name, path in pairs}


def _part(result: dict, key: str) -> dict:
    return next(p for p in result["parts"] if p["key"] == key)["modes"]["steered"]


def _compare(new: dict, old: dict, key: str, field: str):
    from l2s.evaluation import paired_comparison

    return paired_comparison(_part(new, key)[field], _part(old, key)[field])


def row_for(name: str, result: dict, reference: dict, timing: dict, reference_name: str) -> dict:
    """One classifier's figures against the reference, and which rule conditions it meets."""
    position, multi = _part(result, "position"), _part(result, "multi_3_2")
    ref_position = _part(reference, "position")
    colour_multi = _compare(result, reference, "multi_3_2", "colour_correct_by_image")
    colour_two = _compare(result, reference, "position", "colour_correct_by_image")
    seconds = statistics.median(timing["rows"][name]["seconds"]) if name in timing["rows"] else None
    ref_seconds = statistics.median(timing["rows"][reference_name]["seconds"])
    multi_lower = colour_multi.a_correct < colour_multi.b_correct and colour_multi.p_value < ALPHA
    conditions = {"two_object_colour": position["colour_accuracy"] >= ref_position["colour_accuracy"] - MARGIN,
                  "multi_not_lower": not multi_lower,
                  "faster": seconds is not None and seconds < ref_seconds}
    return {"name": name, "position_colour": position["colour_accuracy"], "position_strict": position["accuracy"],
            "multi_colour": multi["colour_accuracy"], "multi_strict": multi["accuracy"],
            "two_object_pairs": colour_two.to_dict(), "multi_pairs": colour_multi.to_dict(),
            "cpu_s_per_image": seconds, "time_vs_reference": None if seconds is None else seconds / ref_seconds,
            "conditions": conditions, "meets_rule": all(conditions.values())}


def table(rows: list[dict]) -> str:
    lines = ["| classifier | two objects colour (strict) | vs all, right only here / only there (p) | multi 3/2 colour "
             "(strict) | vs all (p) | steered CPU s/image | vs all | rule 1 / 2 / 3 |",
             "|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        two, multi, c = r["two_object_pairs"], r["multi_pairs"], r["conditions"]
        marks = " / ".join("yes" if c[k] else "no" for k in ("two_object_colour", "multi_not_lower", "faster"))
        seconds = "-" if r["cpu_s_per_image"] is None else f"{r['cpu_s_per_image']:.3f}"
        ratio = "-" if r["time_vs_reference"] is None else f"{r['time_vs_reference']:.2f}x"
        lines.append(f"| {r['name']} | {r['position_colour']:.3f} ({r['position_strict']:.3f}) | "
                     f"{two['a_only']} / {two['b_only']} (p = {two['p_value']:.2g}) | {r['multi_colour']:.3f} "
                     f"({r['multi_strict']:.3f}) | {multi['a_only']} / {multi['b_only']} (p = {multi['p_value']:.2g}) "
                     f"| {seconds} | {ratio} | {marks} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="name=FILE: the all-layers bench result (first row)")
    p.add_argument("--runs", required=True, help="name=FILE,...: bench results of the K-layer classifiers, "
                                                 "in increasing K (names as in the timing JSON)")
    p.add_argument("--timing", required=True, type=Path, help="shapes_layers_timing.py --results JSON")
    p.add_argument("--results", type=Path, help="write the table here (and the rows as .json)")
    args = p.parse_args(argv)
    (reference_name, reference_path), = _pairs(args.reference).items()
    reference = json.loads(reference_path.read_text())
    timing = json.loads(args.timing.read_text())
    runs = {name: json.loads(path.read_text()) for name, path in _pairs(args.runs).items()}
    rows = [row_for(reference_name, reference, reference, timing, reference_name)]
    rows += [row_for(name, result, reference, timing, reference_name) for name, result in runs.items()]
    best = next((r["name"] for r in rows[1:] if r["meets_rule"]), None)
    verdict = f"best K: {best}" if best else "no K-layer classifier meets the rule: all layers"
    text = table(rows) + f"\n\n{verdict}\n"
    print(text)
    if args.results:
        command = "python experiments/scripts/shapes_layers_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.results.write_text(f"Generated by:\n\n    {command}\n\n{text}")
        args.results.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows, "best": best},
                                                                indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
