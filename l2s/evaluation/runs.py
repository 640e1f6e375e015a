"""Spatial-accuracy runs: generate every prompt with and without steering, score, report.

:func:`run_eval` generates, then scores; :func:`evaluate_images` scores images given in memory
(:mod:`.folders` scores a GenEval-layout folder that something else generated).

The run directory's layout and settings check: :mod:`.run_dir`.

Resuming: an image's JSON is written after its PNG (both atomically), so it marks a finished
image. A rerun skips images whose JSON was made with the same rule and detector and whose PNG
still decodes, re-scores images whose JSON used another one, and generates the rest. A run
directory is locked while a run writes it (a second run is refused); a damaged ``run.json`` is
an error (``restart=True``, ``--restart``: start the run over). The images still to make are made
``batch_size`` per steering call; the batch size is not a setting of the run (a batched image is
the image made alone), so a run resumes with any.

Spread over processes (``torchrun`` / ``accelerate launch``, :mod:`l2s.distributed`): rank 0
prepares the directory and holds its lock; each rank makes every N-th (prompt, seed) pair, both
modes of it; the records are gathered and rank 0 writes the report, the same as one process's.
A run resumes with any number of processes: the per-image records are the state.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from l2s.errors import L2SError, UsageError
from l2s.files import atomic_write_json
from l2s.distributed import output_lock, world
from l2s.relations import DIAGONAL, NON_DIRECTIONAL
from .detectors import Detector
from .geometry import GENEVAL, RULES, T2I_COMPBENCH
from .records import (
    MODES,
    STEERED,
    ImageRecord,
    detect_and_score,
    open_rgb,
    read_json,
    save_png,
    write_json,
)
from .reports import EvalReport, ModeReport, write_outputs
from .run_dir import prepare_run_dir, read_run_file, trusted_png
from .specs import ImageResult, PromptSpec, check_rule, result_from_record
from .stats import Summary, summarise

log = logging.getLogger(__name__)



def prompt_name(names: Sequence[str] | None, index: int) -> str:
    """How an error names prompt ``index``: ``names[index]`` (e.g. its file and line), else ``prompt i``."""
    return names[index] if names is not None else f"prompt {index}"


def check_scorable(specs: Sequence[PromptSpec], rule: str, detector: Detector | None = None,
                   names: Sequence[str] | None = None) -> None:
    """Refuse, before any image is made, prompts that ``rule`` or ``detector`` cannot score; an
    error names the prompt by ``names[i]`` (default ``prompt i``)."""
    if rule not in RULES:
        raise L2SError(f"unknown rule {rule!r} (choose from {', '.join(RULES)})")
    parse_label = getattr(detector, "parse_label", None)  # detectors with a closed vocabulary
    for index, spec in enumerate(specs):
        name = prompt_name(names, index)
        for check in spec.checks:
            if rule == GENEVAL and check.relation in NON_DIRECTIONAL:
                raise L2SError(f"{name} ({spec.prompt!r}): GenEval's rule has no verdict for "
                               f"{check.relation!r}; use --rule {T2I_COMPBENCH}")
            if rule == T2I_COMPBENCH and check.relation in DIAGONAL:
                raise L2SError(f"{name} ({spec.prompt!r}): T2I-CompBench has no rule for "
                               f"{check.relation!r}; use --rule {GENEVAL}")
        if parse_label is not None:
            for label in spec.objects:
                try:
                    parse_label(label)
                except L2SError as error:
                    raise L2SError(f"{name}: {error}; pass --detector PATH (a local "
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
            atomic_write_json(out_dir / f"{name}.json", record)
            lines.write(json.dumps(record, default=str) + "\n")
    summary = summarise(results, rule)
    atomic_write_json(out_dir / "summary.json", summary.to_dict())
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
    batch_size: int = 1


def run_eval(steerer, specs: Sequence[PromptSpec], detector: Detector, out_dir: str | Path, *,
             seeds: Sequence[int] = (0, 1, 2, 3), modes: Sequence[str] = MODES, rule: str = GENEVAL,
             num_inference_steps: int | None = None, height: int | None = None, width: int | None = None,
             guidance_scale: float | None = None, schedule=None, settings: dict[str, Any] | None = None,
             detector_name: str = "custom", contact_sheets: bool = True,
             progress: bool = True, restart: bool = False, batch_size: int = 1,
             prompt_names: Sequence[str] | None = None, progress_label: str = "l2s eval") -> EvalReport:
    """Generate every (prompt, seed) in every mode with ``steerer``, score, and write the run.

    ``steerer`` is a :class:`l2s.pipelines.SteeringPipeline`; mode ``"base"`` generates with
    ``steer=False``, ``"steered"`` with steering, from the same seed. ``settings`` (JSON-able)
    identify how images are made (default: this call's sampling arguments, steps to schedule): a
    run directory resumes only with the same settings.
    ``detector_name`` and ``rule`` identify the scoring: images scored otherwise are re-scored.
    ``restart``: remove a previous run in ``out_dir`` first. ``batch_size``: images made per
    steering call (a list of prompts and seeds, each image as if made alone; more use more memory
    for the steering backward); 1: one call per image. ``prompt_names``: how errors name each prompt
    (e.g. its file and line; default ``prompt i``). ``run.json`` and ``summary.json`` also record what
    the images are made with, the model's defaults filled in (``resolved``). ``progress_label``: the
    progress bar's name (the bench names its part there).
    """
    modes = list(dict.fromkeys(modes))
    generate = dict(num_inference_steps=num_inference_steps, height=height, width=width,
                    guidance_scale=guidance_scale, schedule=schedule)
    _check_request(steerer, specs, seeds, modes, rule, detector, batch_size, generate, prompt_names)
    if settings is None:   # a rerun with other sampling arguments is another run, not a resume
        settings = _call_settings(out_dir, generate)
    out = Path(out_dir)
    resolved = _in_effect(steerer, generate, modes)
    with output_lock(out, kind="eval"):
        world().on_main(lambda: prepare_run_dir(out, specs, modes, dict(settings), restart, seeds, resolved))
        generate["progress"] = False
        run = _Run(steerer, detector, out, rule, {"rule": rule, "detector": detector_name}, generate, batch_size)
        return _generate_run(run, specs, seeds, modes, settings, contact_sheets, progress, resolved, progress_label)


def _in_effect(steerer, generate: dict, modes: Sequence[str]) -> dict | None:
    """What the images are made with, the model's defaults in place of None (steps, size, guidance,
    true CFG; the schedule where a mode steers); None for a steerer that cannot say (a stand-in)."""
    resolve = getattr(steerer, "sampling_in_effect", None)
    if resolve is None:
        return None
    resolved = resolve(**generate)
    if STEERED not in modes:
        del resolved["schedule"]    # no image follows it
    return resolved


def _call_settings(out_dir: str | Path, generate: dict) -> dict:
    """A run's settings from its call's sampling arguments; ``{}`` for a run recorded before they
    were (it resumes as it did)."""
    try:
        earlier = (read_run_file(out_dir) or {}).get("generation")
    except L2SError:
        earlier = None      # a damaged run.json: preparing the folder says so
    if earlier == {}:
        return {}
    return {k: v.to_json() if hasattr(v, "to_json") else v for k, v in generate.items()}


def _generate_run(run: _Run, specs: Sequence[PromptSpec], seeds: Sequence[int], modes: list[str],
                  settings: dict[str, Any] | None, contact_sheets: bool, progress: bool,
                  resolved: dict | None = None, label: str = "l2s eval") -> EvalReport:
    """The images of :func:`run_eval` (made, re-scored or resumed), then its report files."""
    out, rule = run.out, run.rule
    started = time.perf_counter()
    group = world()
    pairs = [(index, seed) for index in range(len(specs)) for seed in seeds]
    mine = _my_pairs(out, pairs, modes, group)
    with tqdm(total=len(mine) * len(modes), desc=group.bar_label(label), unit="img",
              disable=not (progress and group.is_main)) as bar:
        made = _make_share(run, specs, pairs, mine, modes, bar)
    everything = sorted((item for share in group.gather(made) for item in share), key=lambda item: item[0])
    records = {mode: [r for _, k, r in everything if k == mode] for mode in modes}
    report = EvalReport(
        modes={mode: ModeReport(summarise([r.result for r in rs], rule), rs) for mode, rs in records.items()},
        settings={**(settings or {}), "seeds": list(seeds), "modes": modes, "n_prompts": len(specs), **run.scoring},
        wall_time_s=time.perf_counter() - started, resolved=resolved)
    if group.is_main:
        write_outputs(out, report, contact_sheets, columns=8)
    return report


def _make_share(run: _Run, specs: Sequence[PromptSpec], pairs: list[tuple[int, int]], mine: list[int],
                modes: list[str], bar) -> list[tuple[int, str, ImageRecord]]:
    """This rank's images, as (position of the pair, mode, record): those a previous run made are
    resumed or re-scored first; the rest are generated ``run.batch_size`` per steering call, the
    chunks of both modes taking turns (a killed run leaves both modes of its first pairs)."""
    made: list[tuple[int, str, ImageRecord]] = []
    tally = {mode: [0, 0] for mode in modes}  # correct, images

    def add(position: int, mode: str, record: ImageRecord) -> None:
        made.append((position, mode, record))
        if record.result.correct is not None:   # an image without a verdict is in no count
            tally[mode][0] += int(record.result.correct)
            tally[mode][1] += 1
        bar.update()
        bar.set_postfix({m: f"{c / n:.2f}" for m, (c, n) in tally.items() if n})

    todo: dict[str, list[int]] = {mode: [] for mode in modes}
    for position in mine:
        index, seed = pairs[position]
        for mode in modes:
            record = _existing_image(run, specs[index], index, seed, mode)
            if record is None:
                todo[mode].append(position)
            else:
                add(position, mode, record)
    size = run.batch_size
    chunks = {mode: [todo[mode][k:k + size] for k in range(0, len(todo[mode]), size)] for mode in modes}
    for mode in (m for m in modes if todo[m] and hasattr(run.steerer, "warm_up")):   # untimed: steady-state times
        first = [pairs[position] for position in chunks[mode][0]]   # the first batch: the steerer picks
        prompts, seeds = [specs[index].prompt for index, _ in first], [seed for _, seed in first]
        single = len(first) == 1
        run.steerer.warm_up(prompts[0] if single else prompts, steer=mode == STEERED,
                            seed=seeds[0] if single else seeds, **run.generate)
    for k in range(max(len(c) for c in chunks.values())):
        for mode in modes:
            if k < len(chunks[mode]):
                for position, record in _generate_chunk(run, specs, pairs, chunks[mode][k], mode):
                    add(position, mode, record)
    return sorted(made, key=lambda item: (item[0], modes.index(item[1])))


def _my_pairs(out: Path, pairs: list[tuple[int, int]], modes: list[str], group) -> list[int]:
    """Positions of the (prompt, seed) pairs this rank makes, both modes of a pair on one rank.

    Pairs left to make and pairs a previous run finished (their records mark them) are dealt out
    separately, every ``size``-th one to each rank, so a resumed run's work stays balanced.
    """
    if not group.spread:
        return list(range(len(pairs)))

    def finished() -> list[bool]:
        return [all((out / mode / f"{index:05d}" / "samples" / f"{seed:04d}.json").is_file() for mode in modes)
                for index, seed in pairs]

    done = group.on_main(finished)
    return sorted(group.share([p for p in range(len(pairs)) if not done[p]])
                  + group.share([p for p in range(len(pairs)) if done[p]]))


def _check_request(steerer, specs: Sequence[PromptSpec], seeds: Sequence[int], modes: list[str], rule: str,
                   detector: Detector, batch_size: int = 1, generate: dict | None = None,
                   names: Sequence[str] | None = None) -> None:
    """Everything that can be wrong with a run, checked before the first (slow) image is made
    (and before its folder is claimed)."""
    if not callable(getattr(detector, "detect", None)):
        raise UsageError(f"detector must have a detect(image, labels) method, got {type(detector).__name__}")
    if isinstance(seeds, (int, str)):
        raise UsageError(f"seeds must be a list of integers, got {seeds!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not modes or any(m not in MODES for m in modes):
        raise L2SError(f"modes must be among {', '.join(MODES)}, got {modes}")
    if not specs:
        raise L2SError("no prompts to evaluate")
    for index, spec in enumerate(specs):
        if not isinstance(spec, PromptSpec):   # spec_from_prompt's None: a prompt with nothing to score
            raise UsageError(f"prompt {index}: expected a PromptSpec, got {spec!r} (spec_from_prompt gives "
                             "None for a prompt without a relation: leave such prompts out)")
    if names is not None and len(names) != len(specs):
        raise UsageError(f"prompt_names must name each of the {len(specs)} prompts, got {len(names)} names")
    if not seeds:
        raise L2SError("no seeds: give at least one")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
            raise L2SError(f"seeds must be integers in [0, 2**64), got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise L2SError("a seed is repeated: each (prompt, seed) image is made once")
    check_scorable(specs, rule, detector, names)
    # Every prompt must parse and fit the tokenizer.
    for index, spec in enumerate(specs):
        try:
            steerer.plan(spec.prompt)
        except L2SError as error:
            raise L2SError(f"{prompt_name(names, index)} ({spec.prompt!r}): {error}") from None
    check_arguments = getattr(steerer, "check_arguments", None)   # a SteeringPipeline's; stand-ins may lack it
    if check_arguments is not None:
        check_arguments(specs[0].prompt, seed=seeds[0], steer=STEERED in modes, **(generate or {}))


def _image_png(run: _Run, index: int, seed: int, mode: str) -> Path:
    return run.out / mode / f"{index:05d}" / "samples" / f"{seed:04d}.png"


def _existing_image(run: _Run, spec: PromptSpec, index: int, seed: int, mode: str) -> ImageRecord | None:
    """An image a previous run made: resumed from its record or re-scored; None: generate it."""
    png = _image_png(run, index, seed, mode)
    record_path = png.with_suffix(".json")
    previous = read_json(record_path)
    if previous is not None and previous.get("prompt") != spec.prompt:
        raise L2SError(f"{record_path} was made for the prompt {previous.get('prompt')!r}, not "
                       f"{spec.prompt!r}; use another --out for other prompts")
    if previous is None or not trusted_png(png):
        return None  # made (again): generation is seeded, so it is the same image
    if previous.get("scoring") == run.scoring:
        return ImageRecord(result_from_record(previous), png, previous["meta"], "resumed")
    return _score_image(run, spec, index, seed, mode, open_rgb(png), previous["meta"], "rescored")


def _generate_chunk(run: _Run, specs: Sequence[PromptSpec], pairs: list[tuple[int, int]], positions: list[int],
                    mode: str) -> list[tuple[int, ImageRecord]]:
    """The images of ``positions`` in ``mode``: one steering call (one image: today's single call,
    several: a batch of prompts and seeds), then each one saved, scored and recorded."""
    jobs = [(position, *pairs[position]) for position in positions]  # (position, prompt index, seed)
    prompts, seeds = [specs[index].prompt for _, index, _ in jobs], [seed for _, _, seed in jobs]
    cpu_started = time.process_time()   # every thread of this process: what steering costs a CPU
    if len(jobs) == 1:
        generated = run.steerer(prompts[0], seed=seeds[0], steer=mode == STEERED, **run.generate)
        views = [_steering_meta(generated.plan, getattr(generated, "outcome", None),
                                generated.diagnostics.records, mode, getattr(generated, "warnings", ()))]
    else:
        generated = run.steerer(prompts, seed=seeds, steer=mode == STEERED, **run.generate)
        views = [_steering_meta(plan, outcome, generated.diagnostics.for_image(i).records if plan.steered else [],
                                mode, getattr(generated, "warnings", ()))
                 for i, (plan, outcome) in enumerate(zip(generated.plans, generated.outcomes))]
    seconds = generated.timings["total"] / len(jobs)
    cpu_seconds = (time.process_time() - cpu_started) / len(jobs)
    made = []
    for (position, index, seed), image, steering in zip(jobs, generated.images, views):
        png = _image_png(run, index, seed, mode)
        save_png(image, png)
        meta = {"mode": mode, "prompt_index": index, "seed": seed, "image": str(png.relative_to(run.out)),
                "generate_s": seconds, "generate_cpu_s": cpu_seconds, "batch": len(jobs), **steering}
        made.append((position, _score_image(run, specs[index], index, seed, mode, image, meta, "generated")))
    return made


def _score_image(run: _Run, spec: PromptSpec, index: int, seed: int, mode: str, image: Image.Image,
                 meta: dict[str, Any], status: str) -> ImageRecord:
    """Detect and score an image, and write its record (after its PNG: the record marks it done)."""
    png = _image_png(run, index, seed, mode)
    result, meta["score_s"] = detect_and_score(run.detector, image, spec, run.rule, f"{mode}/{index:05d}/{seed:04d}")
    write_json(png.with_suffix(".json"), {**result.to_dict(), "meta": meta, "scoring": run.scoring})
    return ImageRecord(result, png, meta, status)


def _steering_meta(plan, outcome, records, mode: str, call_warnings=()) -> dict[str, Any]:
    """What steering did to one image: its plan, outcome, iteration records (as if alone) and what
    made it doubtful (the plan's warnings and the call's, e.g. resampled maps)."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for record in records:
        first.setdefault(record.relation, record.target_probability[0])
        last[record.relation] = record.target_probability[0]
    return {
        "steered": mode == STEERED and (outcome or plan).steered,  # what ran
        "parsed_relations": [t.to_dict() for t in plan.parsed.triplets],
        "iterations": len(records),
        "target_probability_first": [first[k] for k in sorted(first)],
        "target_probability_last": [last[k] for k in sorted(last)],
        "warnings": [*getattr(plan, "warnings", []), *call_warnings] if mode == STEERED and plan.steered else [],
    }
