"""The shapes bench's acceptance targets against a bench result (`l2s shapes bench` JSON).

    python experiments/scripts/shapes_targets.py experiments/results/shapes_accuracy.json [--out FILE.md]

Targets (set before the shipped model was benched): two objects, base at most 0.35 and steered at
least 0.75 and 3x base, on both metrics; multi-relation prompts (3 objects, 2 relations) steered
to at least 0.5 on colours; the dual classifier measurably better than the pos-only one (paired
sign test, p < 0.05).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASE_TARGET, STEERED_TARGET, RATIO_TARGET, MULTI_TARGET, ALPHA = 0.35, 0.75, 3, 0.5, 0.05


def measurably_better(c) -> bool:
    """The first setting of a paired comparison measurably better: more pairs won alone, and the
    split unlikely under no difference (sign test, p < ALPHA)."""
    return c.a_only > c.b_only and c.p_value < ALPHA


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def position_lines(position: dict) -> list[str]:
    lines = []
    for metric, key in (("strict", "accuracy"), ("colour", "colour_accuracy")):
        base, steered = position["base"][key], position["steered"][key]
        ratio = f"{steered / base:.2f}x" if base else "no ratio to a base of 0"
        lines.append(f"- {metric}: base {base:.3f} (target <= {BASE_TARGET}: {_met(base <= BASE_TARGET)}), "
                     f"steered {steered:.3f} (target >= {STEERED_TARGET}: {_met(steered >= STEERED_TARGET)}; "
                     f">= {RATIO_TARGET}x base: {ratio}, {_met(steered >= RATIO_TARGET * base)})")
    return lines


def multi_lines(multi: dict) -> list[str]:
    colour = multi["steered"]["colour_accuracy"]
    return [f"- multi 3/2 steered: strict {multi['steered']['accuracy']:.3f}, colour "
            f"{colour:.3f} (target >= {MULTI_TARGET}: {_met(colour >= MULTI_TARGET)})"]


def ablation_lines(ablation: dict) -> list[str]:
    from l2s.evaluation import paired_comparison

    lines = []
    for metric, key in (("colour", "colour_correct_by_image"), ("strict", "correct_by_image")):
        c = paired_comparison(ablation["reference_dual"][key], ablation["steered"][key])
        if c.n_pairs:
            lines.append(f"- dual vs pos-only classifier, {metric}: sign test p = {c.p_value:.3g} "
                         f"(target dual measurably better, p < {ALPHA}: {_met(measurably_better(c))})")
    return lines


def target_summary(results: dict) -> str:
    """Markdown bullets: each target against what the bench measured."""
    parts = {p["key"]: p["modes"] for p in results["parts"]}
    position, multi = parts.get("position") or {}, parts.get("multi_3_2") or {}
    lines = ["## Targets (measured, not adjusted)", ""]
    lines += position_lines(position) if {"base", "steered"} <= set(position) else []
    lines += multi_lines(multi) if "steered" in multi else []
    ablation = parts.get("ablation") or {}
    lines += ablation_lines(ablation) if "reference_dual" in ablation else []
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a bench result (.json written beside its .md)")
    parser.add_argument("--out", type=Path, help="also write the bullets here")
    args = parser.parse_args(argv)
    summary = target_summary(json.loads(args.results.read_text()))
    print(summary)
    if args.out:
        bullets = "\n".join(summary.splitlines()[2:]) or "(no part of this bench has a target)"
        args.out.write_text(f"# Shapes bench targets: {args.results}\n\n{bullets}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
