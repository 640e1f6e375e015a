"""The shapes bench's report: one Markdown table, the paired comparisons, the files."""
from __future__ import annotations

import json
from pathlib import Path

from l2s.files import atomic_write_json, atomic_write_text

from .bench import BENCH_PROMPT_SEED, BOTH_MODES
from .recipes import SHAPES_STEPS, shipped_assets

BENCH_TITLE = "# Shapes world: spatial accuracy, base vs steered"   # the first line of every --results table


def _acc(mode: dict | None, colour: bool = False) -> str:
    if not mode:
        return "-"
    if colour:
        return f"{mode['colour_accuracy']:.3f} ({mode['colour_n_correct']}/{mode['n_images']})"
    return f"{mode['accuracy']:.3f} ({mode['n_correct']}/{mode['n_images']})"


def _found(mode: dict | None) -> str:
    return f"{mode['objects_found']:.2f}" if mode and "objects_found" in mode else "-"


def _position_part(results: dict) -> dict | None:
    return next((p for p in results["parts"] if p["key"] == "position"), None)


def _found_clause(results: dict) -> str:
    """How often the base model draws both objects with their shapes (empty without base images)."""
    position = _position_part(results)
    found = (position or {}).get("modes", {}).get("base", {}).get("objects_found")
    return "" if found is None else (f" (base, two objects: all objects found with their shapes in {found:.0%} of "
                                     "images)")


def bench_table(results: dict) -> str:
    """The bench as one Markdown table (plus per-relation rows of the two-object part).

    "strict": GenEval rule on colour + shape labels ("red circle"); "colour": the same rule on the
    colour blobs alone (:func:`~l2s.shapes.verdicts.colour_only`). Rows that only steer (presets,
    ablation) take their base, and the reference-schedule dual-classifier result ("reference dual,
    same images"), from the two-object run restricted to the same prompts and seeds.
    """
    lines = ["| part | prompts x seeds | schedule | classifier | base strict | steered strict | base colour | "
             "steered colour | colour steered/base | reference dual, same images (colour) | "
             "objects found base / steered | s/image steered |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in results["parts"]:
        base, steered, same = (p["modes"].get(k) for k in ("base", "steered", "reference_dual"))
        ratio = "-"
        if base and steered and base.get("colour_accuracy", 0) > 0:
            ratio = f"{steered['colour_accuracy'] / base['colour_accuracy']:.2f}x"
        seconds = f"{steered['generate_s_per_image']:.2f}" if steered else "-"
        lines.append(f"| {p['label']} | {p['n_prompts']}x{len(p['seeds'])} | {p['schedule']} | {p['classifier']} | "
                     f"{_acc(base)} | {_acc(steered)} | {_acc(base, True)} | {_acc(steered, True)} | "
                     f"{ratio} | {_acc(same, True)} | {_found(base)} / {_found(steered)} | {seconds} |")
    position = _position_part(results)
    if position:
        lines += ["", *_relation_rows(position["modes"])]
    if results.get("no_relation"):
        lines += ["", *plain_rows(results["no_relation"])]
    if any("reward_mean" in m for p in results["parts"] for m in p["modes"].values()):
        lines += ["", *reward_rows(results)]
    return "\n".join(lines)


def reward_rows(results: dict) -> list[str]:
    """The reward model's mean score beside exact accuracy, per part and generated mode."""
    lines = ["| reward model vs exact | mode | strict accuracy | mean reward score | AUC (correct above wrong) |",
             "|---|---|---|---|---|"]
    for p in results["parts"]:
        for mode, m in p["modes"].items():
            if "reward_mean" in m:
                auc, mean = (f"{m[k]:.3f}" if m.get(k) is not None else "-" for k in ("reward_auc", "reward_mean"))
                lines.append(f"| {p['label']} | {mode} | {m['accuracy']:.3f} | {mean} | {auc} |")
    return lines


def plain_rows(plain: dict) -> list[str]:
    """The no-relation part (:mod:`.bench_plain`): what the model draws when no place is asked for."""
    spread = f"{plain['position_spread']:.3f}" if plain.get("position_spread") is not None else "-"
    return ["| no relation (unsteered) | prompts x seeds | objects found (colour + shape) | objects found (colour) | "
            "position spread across seeds |", "|---|---|---|---|---|",
            f"| two objects | {plain['n_prompts']}x{len(plain['seeds'])} | {plain['objects_found']:.3f} | "
            f"{plain['colours_found']:.3f} | {spread} |"]


def _relation_rows(modes: dict) -> list[str]:
    """Per-relation rows of the two-object part, strict and colour."""
    lines = ["| relation (two objects) | base strict | steered strict | base colour | steered colour |",
             "|---|---|---|---|---|"]
    relations = sorted({r for m in modes.values() for r in m.get("per_relation", {})}
                       | {r for m in modes.values() for r in m.get("colour_per_relation", {})})

    def cell(mode: str, key: str, relation: str) -> str:
        if mode not in modes:   # a one-mode bench
            return "-"
        c, t = modes[mode].get(key, {}).get(relation, (0, 0))
        return f"{c / t if t else 0:.3f} ({c}/{t})"

    for r in relations:
        lines.append(f"| {r} | {cell('base', 'per_relation', r)} | {cell('steered', 'per_relation', r)} | "
                     f"{cell('base', 'colour_per_relation', r)} | {cell('steered', 'colour_per_relation', r)} |")
    return lines


def _models(settings: dict) -> str:
    """What the bench ran, in words: the shipped assets, or the model and classifier folders given."""
    assets = shipped_assets()
    shipped = (assets.pipeline, assets.classifier, assets.ablation_classifier)
    given = (settings.get("pipeline"), *(settings.get("classifiers") or {}).values())
    if all(path is not None for path in given) and \
            [Path(path).resolve() for path in given] == [path.resolve() for path in shipped]:
        return "Shipped shapes model + classifiers (`l2s/shapes/assets`)"
    classifiers = " and ".join(f"`{path}`" for path in (settings.get("classifiers") or {}).values())
    return f"Shapes model `{settings.get('pipeline')}` with classifiers {classifiers} (not all the shipped ones)"


def _benched_models(settings: dict) -> str:
    """The models in words, with the LoRA adapter merged into the model when there was one."""
    lora = settings.get("lora")
    return _models(settings) + (f", LoRA adapter `{lora}` merged into the model" if lora else "")


def _bench_header(results: dict, command: str | None) -> list[str]:
    """The paragraphs above the table: what ran, how it was judged, how to run it again."""
    settings = results["settings"]
    cfg = (settings.get("sampling") or {}).get("true_cfg_scale", 1.0)
    guidance = f"true CFG {cfg:g} against the empty caption" if cfg != 1.0 else "no guidance"
    step_size = settings.get("step_size")
    steering = f"steering step size {step_size:g}, " if step_size is not None else ""
    return [BENCH_TITLE, "",
            f"{_benched_models(settings)}, {SHAPES_STEPS} steps, {guidance} "
            f"(base and steered alike), {steering}{_size(settings)}CPU. "
            "GenEval rule with `l2s.shapes.ShapesDetector`; image seeds "
            f"{settings['seeds']}, prompt seed {BENCH_PROMPT_SEED}, none of them used while building "
            "the model or classifiers. Two metrics: **strict** = the detector must find each object with "
            "its colour *and* shape (GenEval); **colour** = the same rule on the colour blobs only "
            "(prompts use distinct colours). This small model draws colours in place more reliably than "
            f"shapes the strict detector accepts{_found_clause(results)}, so strict accuracy is capped by image "
            "quality; the "
            "colour metric measures placement, which is what steering controls.", "",
            f"Prompt counts of the multi-relation, preset and held-out rows scaled by "
            f"`--scale {settings.get('scale')}`; the two-object row and the ablation (same prompts "
            f"and seeds) are {settings.get('position_prompts')} prompts x "
            f"{len(settings['seeds'])} seeds. s/image: generation wall time on this machine's CPU. "
            "Generated by:", "", f"    {command or 'l2s shapes bench'}", "", ""]


def is_bench_results(path: str | Path) -> bool:
    """Whether ``path`` holds a bench results JSON (one ``--results`` may replace)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "parts" in data and "settings" in data


def write_bench_results(results: dict, markdown: str | Path, command: str | None = None) -> Path:
    """Write the Markdown table (and the JSON beside it)."""
    markdown = Path(markdown)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(markdown.with_suffix(".json"), results)
    header = _bench_header(results, command)
    atomic_write_text(markdown, "\n".join(header) + bench_table(results) + "\n\n" + comparison_summary(results) + "\n")
    return markdown


def comparison_summary(results: dict) -> str:
    """The bench's paired comparisons as Markdown bullets: images (or maps) judged both ways, each
    with its counts and an exact sign-test p-value. Measurements only: no verdicts."""
    parts = {p["key"]: p["modes"] for p in results["parts"]}
    comparison = results.get("classifier_comparison") or {}
    position = parts.get("position")
    lines = ["## Paired comparisons (measured)", ""]
    lines += _ablation_lines(parts.get("ablation") or {})
    lines += _map_comparison_lines(comparison)
    lines += _leakage_lines(comparison)
    lines += _steered_vs_base_lines(position) if position and set(BOTH_MODES) <= set(position) else []
    return "\n".join(lines)


def _size(settings: dict) -> str:
    size = settings.get("image_size")   # results of older versions do not record it
    return f"{size}x{size}, " if size else ""


def _ablation_lines(ablation: dict) -> list[str]:
    """Dual vs pos-only classifier steering, paired on the same images."""
    from l2s.evaluation import paired_comparison

    if "reference_dual" not in ablation:
        return []
    lines = []
    for metric, key in (("colour", "colour_correct_by_image"), ("strict", "correct_by_image")):
        c = paired_comparison(ablation["reference_dual"][key], ablation["steered"][key])
        if not c.n_pairs:
            continue
        lines.append(f"- dual vs pos-only classifier, {metric}, paired on {c.n_pairs} images: "
                     f"{c.a_correct / c.n_pairs:.3f} vs {c.b_correct / c.n_pairs:.3f}; right with dual only "
                     f"{c.a_only}, with pos-only only {c.b_only}, sign test p = {c.p_value:.3g}")
    return lines


def _map_comparison_lines(comparison: dict) -> list[str]:
    """Dual vs pos-only classifier on the classifier data's held-out maps, per prompt type."""
    lines = []
    for kind, c in (comparison.get("by_prompt_type") or {}).items():
        n = c["n_pairs"]
        if not n:
            continue
        lines.append(f"- dual vs pos-only classifier on held-out maps ({comparison['split']} split of the classifier "
                     f"data), {kind} prompts, paired on {n} maps: {c['a_correct'] / n:.3f} vs "
                     f"{c['b_correct'] / n:.3f}; right with dual only {c['a_only']}, with pos-only only "
                     f"{c['b_only']}, sign test p = {c['p_value']:.3g}")
    return lines


def _leakage_lines(comparison: dict) -> list[str]:
    """Each classifier's relation leakage, overall and by step index."""
    from l2s.evaluation import PairedComparison
    from l2s.training import leakage_by_step

    lines = []
    for name, recorded in (comparison.get("leakage") or {}).items():
        if recorded:
            leakage = {step: PairedComparison(**{k: v for k, v in c.items() if k != "p_value"})
                       for step, c in recorded.items()}
            c = leakage["all"]
            if not c.n_pairs:
                continue
            lines.append(f"- relation leakage of the {name.replace('_', '-')} classifier (held-out accuracy on an "
                         f"image's maps inverted with the true word minus with a wrong one, paired on {c.n_pairs} "
                         f"maps): {(c.a_correct - c.b_correct) / c.n_pairs:+.3f}, sign test p = {c.p_value:.3g}; "
                         f"by step index: {leakage_by_step(leakage)}")
    return lines


def _steered_vs_base_lines(position: dict) -> list[str]:
    from l2s.evaluation import paired_comparison

    lines = []
    for metric, key in (("colour", "colour_correct_by_image"), ("strict", "correct_by_image")):
        c = paired_comparison(position["steered"][key], position["base"][key])
        lines.append(f"- steered vs base, two objects, {metric}, paired on {c.n_pairs} images: right only when "
                     f"steered {c.a_only}, only in base {c.b_only}, sign test p = {c.p_value:.3g}")
    return lines
