"""Spatial-accuracy runs: generate every prompt with and without steering, score, report.

:func:`run_eval` generates, then scores; :func:`score_image_folder` scores a GenEval-layout
folder that something else generated; :func:`evaluate_images` scores images given in memory.

A run directory::

    OUT/
      run.json                          the generation settings (a resumed run must match them)
      prompts.jsonl                     the prompts with their checks (PromptSpec.to_dict lines)
      base/00000/metadata.jsonl         GenEval's layout: one folder per prompt ...
      base/00000/samples/0000.png       ... one PNG per seed (the file name is the seed)
      base/00000/samples/0000.json      that image's detections, checks, verdict, timings
      steered/...                       the same prompts and seeds, steered
      results.jsonl                     every image's record
      summary.json                      per mode: accuracy, per relation / tag, seconds per image
      contact_sheet_01.png ...          images with their boxes; green border = pass, red = fail

The image folders follow GenEval's layout, so GenEval's own evaluator, or
:func:`score_image_folder` on ``OUT/base``, can score them again with another detector.

Resuming: an image's JSON is written after its PNG (atomically), so it marks a finished image.
A rerun skips images whose JSON was made with the same rule and detector, re-scores images
whose JSON used another one, and generates the rest.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from l2s.errors import L2SError
from l2s.relations import DIAGONAL, NON_DIRECTIONAL
from .detectors import Detector
from .geometry import GENEVAL, RULES, T2I_COMPBENCH
from .prompt_files import geneval_metadata, spec_from_metadata
from .records import (
    IMAGES,
    MODES,
    PROMPTS_FILE,
    RUN_FILE,
    STEERED,
    ImageRecord,
    detect_and_score,
    read_json,
    write_json,
)
from .reports import EvalReport, ModeReport, write_outputs
from .specs import ImageResult, PromptSpec, check_rule, result_from_record
from .stats import Summary, summarise

_DIGITS = re.compile(r"^\d+$")
_SAMPLE = re.compile(r"^\d+\.png$")  # GenEval scores only these files


def check_scorable(specs: Sequence[PromptSpec], rule: str, detector: Detector | None = None) -> None:
    """Refuse, before any image is made, prompts that ``rule`` or ``detector`` cannot score."""
    if rule not in RULES:
        raise L2SError(f"unknown rule {rule!r} (choose from {', '.join(RULES)})")
    parse_label = getattr(detector, "parse_label", None)  # detectors with a closed vocabulary
    for index, spec in enumerate(specs):
        for check in spec.checks:
            if rule == GENEVAL and check.relation in NON_DIRECTIONAL:
                raise L2SError(f"prompt {index} ({spec.prompt!r}): GenEval's rule has no verdict for "
                               f"{check.relation!r}; use --rule {T2I_COMPBENCH}")
            if rule == T2I_COMPBENCH and check.relation in DIAGONAL:
                raise L2SError(f"prompt {index} ({spec.prompt!r}): T2I-CompBench has no rule for "
                               f"{check.relation!r}; use --rule {GENEVAL}")
        if parse_label is not None:
            for label in spec.objects:
                try:
                    parse_label(label)
                except L2SError as error:
                    raise L2SError(f"prompt {index}: {error}; pass --detector PATH (a local "
                                   "open-vocabulary detector) for such objects") from None


def evaluate_images(records: Iterable[tuple[Image.Image, PromptSpec, dict[str, Any]]], detector: Detector,
                    out_dir: str | Path, rule: str = GENEVAL) -> Summary:
    """Detect, score and record every image of a run.

    ``records`` yields ``(image, spec, meta)``; ``meta["name"]`` (default: the running index,
    ``00000``) names the per-image file ``<out_dir>/<name>.json``; the rest of ``meta`` (seed,
    method, ...) is stored with the result. Also writes ``results.jsonl`` (one line per image)
    and ``summary.json``, and returns the :class:`Summary`.
    """
    check_rule(rule)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[ImageResult] = []
    with open(out_dir / "results.jsonl", "w", encoding="utf-8") as lines:
        for index, (image, spec, meta) in enumerate(records):
            meta = dict(meta or {})
            name = str(meta.pop("name", f"{index:05d}"))
            result, _ = detect_and_score(detector, image, spec, rule, name)
            results.append(result)
            record = {**result.to_dict(), "meta": meta}
            (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
            lines.write(json.dumps(record, default=str) + "\n")
    summary = summarise(results, rule)
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------------------------
# Generate and score
# ----------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """What every image of a :func:`run_eval` call shares."""

    steerer: Any
    detector: Detector
    out: Path
    rule: str
    scoring: dict[str, str]
    generate: dict[str, Any]


def run_eval(steerer, specs: Sequence[PromptSpec], detector: Detector, out_dir: str | Path, *,
             seeds: Sequence[int] = (0, 1, 2, 3), modes: Sequence[str] = MODES, rule: str = GENEVAL,
             num_inference_steps: int | None = None, height: int | None = None, width: int | None = None,
             guidance_scale: float | None = None, schedule=None, settings: dict[str, Any] | None = None,
             detector_name: str = "custom", contact_sheets: bool = True,
             progress: bool = True) -> EvalReport:
    """Generate every (prompt, seed) in every mode with ``steerer``, score, and write the run.

    ``steerer`` is a :class:`l2s.pipelines.SteeringPipeline`; mode ``"base"`` generates with
    ``steer=False``, ``"steered"`` with steering, from the same seed. ``settings`` (JSON-able)
    identify how images are made: a run directory resumes only with the same settings.
    ``detector_name`` and ``rule`` identify the scoring: images scored otherwise are re-scored.
    """
    modes = list(dict.fromkeys(modes))
    _check_request(steerer, specs, seeds, modes, rule, detector)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(out, dict(settings or {}))
    with open(out / PROMPTS_FILE, "w", encoding="utf-8") as lines:
        lines.writelines(json.dumps(spec.to_dict()) + "\n" for spec in specs)
    run = _Run(steerer, detector, out, rule, {"rule": rule, "detector": detector_name},
               dict(num_inference_steps=num_inference_steps, height=height, width=width,
                    guidance_scale=guidance_scale, schedule=schedule, progress=False))
    started = time.perf_counter()
    records: dict[str, list[ImageRecord]] = {mode: [] for mode in modes}
    jobs = [(index, seed, mode) for index in range(len(specs)) for seed in seeds for mode in modes]
    with tqdm(total=len(jobs), desc="l2s eval", unit="img", disable=not progress) as bar:
        for index, seed, mode in jobs:
            records[mode].append(_run_image(run, specs[index], index, seed, mode))
            bar.update()
            bar.set_postfix({m: f"{np.mean([r.result.correct for r in rs]):.2f}" for m, rs in records.items() if rs})
    report = EvalReport(
        modes={mode: ModeReport(summarise([r.result for r in rs], rule), rs) for mode, rs in records.items()},
        settings={**(settings or {}), "seeds": list(seeds), "modes": modes, "n_prompts": len(specs), **run.scoring},
        wall_time_s=time.perf_counter() - started)
    write_outputs(out, report, contact_sheets, columns=8)
    return report


def _check_request(steerer, specs: Sequence[PromptSpec], seeds: Sequence[int], modes: list[str], rule: str,
                   detector: Detector) -> None:
    """Everything that can be wrong with a run, checked before the first (slow) image is made."""
    if not modes or any(m not in MODES for m in modes):
        raise L2SError(f"modes must be among {', '.join(MODES)}, got {modes}")
    if not specs:
        raise L2SError("no prompts to evaluate")
    if not seeds:
        raise L2SError("no seeds: give at least one")
    check_scorable(specs, rule, detector)
    # Every prompt must parse and fit the tokenizer.
    for index, spec in enumerate(specs):
        try:
            steerer.plan(spec.prompt)
        except L2SError as error:
            raise L2SError(f"prompt {index} ({spec.prompt!r}): {error}") from None


def _claim_run_dir(out: Path, settings: dict[str, Any]) -> None:
    """Record the generation settings, or check a resumed run used the same ones."""
    previous = read_json(out / RUN_FILE)
    if previous is not None and previous.get("generation") != settings:
        old = previous.get("generation") or {}

        def shown(d: dict, k: str) -> str:  # a setting an older version did not record says so
            return repr(d[k]) if k in d else "(not recorded)"

        changed = sorted(k for k in set(old) | set(settings) if shown(old, k) != shown(settings, k))
        details = ", ".join(f"{k}: {shown(old, k)} -> {shown(settings, k)}" for k in changed)
        raise L2SError(f"{out} holds a run made with other settings ({details}); "
                       "use another --out, or the same settings to resume it")
    write_json(out / RUN_FILE, {"generation": settings})


def _run_image(run: _Run, spec: PromptSpec, index: int, seed: int, mode: str) -> ImageRecord:
    """One image of a run: resumed from its record, re-scored, or generated and scored."""
    folder = run.out / mode / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(geneval_metadata(spec)) + "\n", encoding="utf-8")
    png = folder / "samples" / f"{seed:04d}.png"
    record_path = png.with_suffix(".json")
    previous = read_json(record_path)
    if previous is not None and previous.get("prompt") != spec.prompt:
        raise L2SError(f"{record_path} was made for the prompt {previous.get('prompt')!r}, not "
                       f"{spec.prompt!r}; use another --out for other prompts")
    if previous is not None and previous.get("scoring") == run.scoring and png.is_file():
        return ImageRecord(result_from_record(previous), png, previous["meta"], "resumed")
    if previous is not None and png.is_file():
        image, meta, status = Image.open(png).convert("RGB"), previous["meta"], "rescored"
    else:
        generated = run.steerer(spec.prompt, seed=seed, steer=mode == STEERED, **run.generate)
        image, status = generated.images[0], "generated"
        image.save(png)
        meta = {"mode": mode, "prompt_index": index, "seed": seed, "image": str(png.relative_to(run.out)),
                "generate_s": generated.timings["total"], **_steering_meta(generated, mode)}
    result, meta["score_s"] = detect_and_score(run.detector, image, spec, run.rule, f"{mode}/{index:05d}/{seed:04d}")
    write_json(record_path, {**result.to_dict(), "meta": meta, "scoring": run.scoring})
    return ImageRecord(result, png, meta, status)


def _steering_meta(steering_result, mode: str) -> dict[str, Any]:
    plan = steering_result.plan
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for record in steering_result.diagnostics.records:
        first.setdefault(record.relation, record.target_probability[0])
        last[record.relation] = record.target_probability[0]
    return {
        "steered": mode == STEERED and plan.steered,
        "parsed_relations": [t.to_dict() for t in plan.parsed.triplets],
        "iterations": len(steering_result.diagnostics.records),
        "target_probability_first": [first[k] for k in sorted(first)],
        "target_probability_last": [last[k] for k in sorted(last)],
    }


# ----------------------------------------------------------------------------------------------
# Score an existing image folder
# ----------------------------------------------------------------------------------------------

def score_image_folder(images_dir: str | Path, detector: Detector, out_dir: str | Path, *,
                       rule: str = GENEVAL, detector_name: str = "custom", contact_sheets: bool = True,
                       progress: bool = True) -> EvalReport:
    """Score a GenEval-layout folder (``<digits>/metadata.jsonl`` + ``<digits>/samples/<digits>.png``).

    Folders whose metadata has no position clause (GenEval's other tasks) are skipped. Per-image
    records go to ``OUT/images/<folder>/samples/<n>.json`` (a rerun with the same rule and
    detector skips them), plus ``results.jsonl``, ``summary.json`` and contact sheets in OUT.
    """
    images_dir, out = Path(images_dir), Path(out_dir)
    jobs, skipped = _folder_jobs(images_dir)
    check_scorable([spec for _, spec, _ in jobs], rule, detector)
    out.mkdir(parents=True, exist_ok=True)
    scoring = {"rule": rule, "detector": detector_name}
    started = time.perf_counter()
    records = [_score_sample(folder, spec, png, out, detector, rule, scoring)
               for folder, spec, png in tqdm(jobs, desc="l2s eval", unit="img", disable=not progress)]
    report = EvalReport(modes={IMAGES: ModeReport(summarise([r.result for r in records], rule), records)},
                        settings={"images": str(images_dir.resolve()), "folders_without_position": skipped,
                                  **scoring},
                        wall_time_s=time.perf_counter() - started)
    write_outputs(out, report, contact_sheets)
    return report


def _folder_jobs(images_dir: Path) -> tuple[list[tuple[Path, PromptSpec, Path]], int]:
    """(prompt folder, spec, PNG) of every position-prompt sample, and the folders skipped."""
    if not images_dir.is_dir():
        raise L2SError(f"--images {images_dir}: no such directory")
    folders = sorted(p for p in images_dir.iterdir() if p.is_dir() and _DIGITS.match(p.name)
                     and (p / "metadata.jsonl").is_file())
    if not folders:
        raise L2SError(f"no GenEval image folders (<digits>/metadata.jsonl) in {images_dir}")
    jobs: list[tuple[Path, PromptSpec, Path]] = []
    skipped = 0
    for folder in folders:
        first_line = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[:1]
        try:
            spec = spec_from_metadata(json.loads(first_line[0])) if first_line else None
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise L2SError(f"{folder / 'metadata.jsonl'}: not a GenEval metadata or PromptSpec line ({error})") from None
        if spec is None:
            skipped += 1
            continue
        samples = sorted((p for p in (folder / "samples").glob("*.png") if _SAMPLE.match(p.name)),
                         key=lambda p: int(p.stem))
        jobs += [(folder, spec, png) for png in samples]
    if not jobs:
        raise L2SError(f"no position-prompt images in {images_dir} ({skipped} folders without a position clause)")
    return jobs, skipped


def _score_sample(folder: Path, spec: PromptSpec, png: Path, out: Path, detector: Detector, rule: str,
                  scoring: dict[str, str]) -> ImageRecord:
    """One image of a folder: resumed from its record, or scored."""
    record_path = out / IMAGES / folder.name / "samples" / f"{png.stem}.json"
    previous = read_json(record_path)
    if (previous is not None and previous.get("scoring") == scoring
            and previous["meta"].get("image") == str(png.resolve())):
        return ImageRecord(result_from_record(previous), png, previous["meta"], "resumed")
    try:
        image = Image.open(png).convert("RGB")
    except OSError as error:
        raise L2SError(f"cannot read the image {png}: {error}") from None
    result, score_s = detect_and_score(detector, image, spec, rule, f"{folder.name}/{png.stem}")
    meta = {"mode": IMAGES, "folder": folder.name, "seed": int(png.stem), "image": str(png.resolve()),
            "score_s": score_s}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(record_path, {**result.to_dict(), "meta": meta, "scoring": scoring})
    return ImageRecord(result, png, meta, "rescored" if previous else "scored")
