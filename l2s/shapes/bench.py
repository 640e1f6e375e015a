"""The shapes bench: base vs steered spatial accuracy of the shapes model, end to end.

Two-object, multi-relation and held-out-vocabulary prompts, every schedule preset, and the
leakage ablation (a classifier trained on ``pos`` prompts only), each judged by the GenEval rule
with :class:`~l2s.shapes.ShapesDetector`, strictly and on colours alone (:mod:`.verdicts`).
Tables and paired comparisons: :mod:`.bench_report`.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from l2s.distributed import output_lock, world
from l2s.errors import UsageError
from l2s.values import positive_int
from . import bench_plain as plain_part
from .bench_reward import reward_columns
from .detector import ShapesDetector
from .model import image_size, load_shapes_pipeline
from .prompts import ood_position_prompts, shapes_multi_relation_prompts, shapes_position_prompts
from .recipes import (BENCH_BATCH_SIZE, BENCH_SEEDS, SHAPES_STEP_SIZE, check_weights_folders, classifier_folder,
                      lora_folder, named_schedule, reward_model_path, shipped_assets, steer_shapes_pipeline,
                      weights_fingerprints)
from .verdicts import mode_scores

BENCH_PROMPT_SEED = 0
BOTH_MODES = ("base", "steered")
PLAIN_PROMPTS = 50   # the no-relation part's prompts at scale 1 (x the bench's seeds)


@dataclass
class BenchPart:
    """One row group of the bench: a prompt set evaluated in some modes with one setting."""

    key: str
    label: str
    specs: list
    seeds: tuple[int, ...]
    modes: tuple[str, ...]
    schedule: Any = None
    classifier: str = "dual"
    position_subset: bool = False   # steers a subset of the two-object part's prompts and seeds


def bench_parts(scale: float = 1.0, seeds: Sequence[int] = BENCH_SEEDS, prompt_seed: int = BENCH_PROMPT_SEED,
                presets: Sequence[str] = ("front-loaded", "front-loaded-20", "early-exit", "fast"),
                position_prompts: int = 100) -> list[BenchPart]:
    """The bench's parts; ``scale`` < 1 shrinks the prompt counts of every part but the main
    two-object one (``position_prompts``, GenEval's 100) and the ablation, which steers the same
    prompts and seeds as the main one; at least 4 prompts each. Every part steers with the
    published reference schedule unless it is a preset row."""
    def n(count: int) -> int:
        return max(4, int(round(count * scale)))

    seeds = tuple(seeds)
    main = "reference"
    both = BOTH_MODES
    position = shapes_position_prompts(n=position_prompts, seed=prompt_seed)
    parts = [BenchPart("position", "two objects (GenEval position)", position, seeds, both, main)]
    parts.append(BenchPart("multi_3_2", "multi 3 obj / 2 rel",
                           shapes_multi_relation_prompts(3, 2, n=n(32), seed=prompt_seed), seeds[:2], both, main))
    parts.append(BenchPart("multi_4_3", "multi 4 obj / 3 rel",
                           shapes_multi_relation_prompts(4, 3, n=n(24), seed=prompt_seed), seeds[:2], both, main))
    # The ablation steers the main row's prompts and seeds, so the dual/pos-only comparison is
    # paired image for image at full size.
    parts.append(BenchPart("ablation", "two objects, pos-only classifier (no dual)", position, seeds,
                           ("steered",), main, classifier="pos_only", position_subset=True))
    for name in presets:
        parts.append(BenchPart(f"preset_{name}", f"two objects, preset {name}", position[:n(32)], seeds[:2],
                               ("steered",), name, position_subset=True))
    parts.append(BenchPart("ood", "held-out colour/shape (cyan, diamond)",
                           ood_position_prompts(n(50), seed=prompt_seed), seeds[:2], both, main))
    return parts


@dataclass
class _BenchRun:
    """What the parts of one bench run share: the model, a steerer per classifier (made when first
    needed) and the two-object part's records, which the parts that only steer reuse."""

    pipe: Any
    pipeline_dir: Path
    classifiers: dict[str, Path]
    true_cfg_scale: float | None
    step_size: float
    detector: ShapesDetector = field(default_factory=ShapesDetector)
    steerers: dict[str, Any] = field(default_factory=dict)
    position_records: dict[str, list] = field(default_factory=dict)
    lora: str | None = None   # a LoRA adapter merged into the model (a GRPO-tuned row)
    batch_size: int = BENCH_BATCH_SIZE
    scorer: Any = None        # a reward model scoring every generated image (bench_reward)
    execution: str = "fast"   # how steered iterations run (l2s.steer.CPU_MODES)
    engine: str = "auto"      # the plain steps' engine

    @property
    def speed(self) -> dict:
        """The execution mode and engine a part records, when not the defaults (runs made before resume)."""
        return {**({"execution": self.execution} if self.execution != "fast" else {}),
                **({"engine": self.engine} if self.engine != "auto" else {})}

    def steerer(self, classifier: str):
        from l2s.classifier import RelationClassifier

        if classifier not in self.steerers:
            self.steerers[classifier] = steer_shapes_pipeline(
                self.pipe, RelationClassifier.load(self.classifiers[classifier]),
                true_cfg_scale=self.true_cfg_scale, step_size=self.step_size, mode=self.execution,
                engine=self.engine)
        return self.steerers[classifier]

    def sampling(self) -> dict | None:
        """The sampling options of the first steerer made (all share them)."""
        return next(iter(self.steerers.values())).sampling_options() if self.steerers else None


def run_shapes_bench(out_dir: str | Path, *, pipeline_dir: str | Path | None = None,
                     classifier: str | Path | None = None, ablation_classifier: str | Path | None = None,
                     scale: float = 1.0, seeds: Sequence[int] = BENCH_SEEDS, parts: Sequence[str] | None = None,
                     position_prompts: int = 100, classifier_data: str | Path | None = None,
                     true_cfg_scale: float | None = None, step_size: float | None = None,
                     progress: bool = True, lora: str | Path | None = None,
                     batch_size: int = BENCH_BATCH_SIZE, reward_model: str | Path | None = None,
                     modes: Sequence[str] | None = None, execution: str = "fast", engine: str = "auto") -> dict:
    """Run every bench part (``parts``: keys to keep) into ``out_dir`` and return the results.

    Each part is a :func:`l2s.evaluation.run_eval` run in ``out_dir/<key>`` (resumable; spread
    over the processes of ``torchrun`` / ``accelerate launch`` when started by one). Returns
    ``{"parts": [...], "no_relation": {...}, "settings": {...}}`` with accuracy per mode and per
    relation and the generation wall and CPU time per image (``no_relation``:
    :mod:`.bench_plain`, prompts without a relation, unsteered). ``true_cfg_scale``: the sampling guidance (default
    :data:`~l2s.shapes.settings.SHAPES_TRUE_CFG`), the same for base and steered images;
    ``step_size``: the steering step size of every part (default
    :data:`~l2s.shapes.settings.SHAPES_STEP_SIZE`). With ``classifier_data`` (the classifiers' map
    dataset) it also compares the dual and pos-only classifiers on its held-out maps, per prompt
    type (``"classifier_comparison"``): the leakage check before any steering. ``lora``: a LoRA
    adapter (``l2s shapes grpo``) merged into the model first: its base mode is the tuned model,
    its steered mode the tuned model steered. ``batch_size``: images per steering call
    (:func:`~l2s.evaluation.run_eval`'s; 1: one call per image). ``reward_model``: a SpatialScore
    folder (``l2s shapes train-reward``; ``"spatialscore"``: the shipped one) whose mean score and AUC
    against the exact verdict every generated mode also reports (:mod:`.bench_reward`). ``modes``: the
    modes to generate (default both; ``("base",)`` for a tuned row that the comparison reads without
    steering); a part with none of them is skipped, or refused when ``parts`` names it. ``execution``
    (:data:`l2s.steer.CPU_MODES`) and ``engine`` (plain steps, :mod:`l2s.engines`) choose how images are
    computed, not which: a part records them when not the defaults, and resumes only under the same.
    """
    positive_int(batch_size, "batch_size")   # every check before any model loads
    _check_counts(scale, position_prompts, seeds)
    classifier, ablation_classifier = classifier_folder(classifier), classifier_folder(ablation_classifier)
    _check_classifiers(classifier, ablation_classifier)
    check_weights_folders(lora, reward_model)   # before the model loads
    all_parts = bench_parts(scale, seeds, position_prompts=position_prompts)
    known = [part.key for part in all_parts] + [plain_part.KEY]
    unknown = sorted(set(parts or ()) - set(known))
    if unknown:
        raise UsageError(f"unknown bench part {', '.join(unknown)} (parts: {', '.join(known)})")
    _refuse_repeats("part", parts or ())
    modes = _check_modes(modes, all_parts, parts)
    _check_speed(execution, engine)
    with output_lock(out_dir, kind="bench"):  # one bench per run directory: a second one is refused before any work
        return _run_bench(out_dir, pipeline_dir, classifier, ablation_classifier, scale, seeds, parts,
                          position_prompts, classifier_data, true_cfg_scale, step_size, progress, lora,
                          batch_size, reward_model, modes, execution, engine)


def _check_speed(execution: str, engine: str) -> None:
    """The execution mode and plain-step engine, checked before any work as the pipeline checks them
    when set: the shapes model runs on the CPU (no CUDA graphs, no CUDA-only engine)."""
    import torch

    from l2s.engines import EngineError, check_engine_request
    from l2s.pipelines.flux import refuse_reference_engine
    from l2s.steer import CPU_MODES

    if execution not in CPU_MODES:
        raise UsageError(f"unknown execution mode {execution!r} for the shapes model (on the CPU: "
                         f"{', '.join(CPU_MODES)})")
    refuse_reference_engine(execution, engine)
    if engine not in ("auto", "eager"):
        try:
            check_engine_request(engine, "cpu", torch.float32)
        except EngineError as error:
            raise UsageError(f"engine {engine}: {error}") from None


def _check_counts(scale: float, position_prompts: int, seeds: Sequence[int]) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UsageError(f"scale must be a positive number, got {scale!r}")
    positive_int(position_prompts, "position_prompts")
    if not len(seeds):
        raise UsageError("no image seeds given")


def _check_classifiers(*classifiers: str | Path | None) -> None:
    """Each classifier loads before the run directory is made, by the loader its parts use: a missing
    or damaged one is said as 'l2s generate' says it (and a hub id or checkpoint file is taken as there)."""
    from l2s.classifier import RelationClassifier

    for classifier in classifiers:
        if classifier is not None:
            RelationClassifier.load(classifier)   # small: loading it again per part costs little


def _refuse_repeats(what: str, given: Sequence[str]) -> None:
    """A part or mode named twice would still run once: refused, so a list never says more than runs."""
    if repeated := next((key for key in given if given.count(key) > 1), None):
        raise UsageError(f"--{what}s: the {what} {repeated} is given twice (each {what} runs once)")


def _check_modes(modes: Sequence[str] | None, all_parts: Sequence[BenchPart], parts: Sequence[str] | None) -> tuple:
    """The modes to generate, checked before any model loads (one line per mistake)."""
    if modes is not None and not modes:
        raise UsageError(f"no bench mode given (--modes takes {','.join(BOTH_MODES)} or one of them)")
    modes = tuple(modes or BOTH_MODES)
    wrong = sorted(set(modes) - set(BOTH_MODES))
    if wrong:
        raise UsageError(f"unknown bench mode {', '.join(wrong)} (--modes takes {','.join(BOTH_MODES)} "
                         "or one of them)")
    _refuse_repeats("mode", modes)
    idle = [p for p in all_parts if parts and p.key in parts and not set(p.modes) & set(modes)]
    if idle:
        raise UsageError(f"bench part {idle[0].key} generates only {', '.join(idle[0].modes)} images, not "
                         f"{', '.join(modes)}: drop it from --parts or add the mode")
    return modes


def _run_bench(out_dir: str | Path, pipeline_dir: str | Path | None, classifier: str | Path | None,
               ablation_classifier: str | Path | None, scale: float, seeds: Sequence[int],
               parts: Sequence[str] | None, position_prompts: int, classifier_data: str | Path | None,
               true_cfg_scale: float | None, step_size: float | None, progress: bool,
               lora: str | Path | None = None, batch_size: int = BENCH_BATCH_SIZE,
               reward_model: str | Path | None = None, modes: tuple | None = None, execution: str = "fast",
               engine: str = "auto") -> dict:
    assets = shipped_assets()
    pipeline_dir = Path(pipeline_dir or assets.pipeline)
    classifiers = {"dual": Path(classifier or assets.classifier),
                   "pos_only": Path(ablation_classifier or assets.ablation_classifier)}
    pipe = load_shapes_pipeline(pipeline_dir)
    if lora is not None:
        from l2s.grpo import apply_lora

        apply_lora(pipe, lora_folder(lora))
    run = _BenchRun(pipe, pipeline_dir, classifiers, true_cfg_scale,
                    SHAPES_STEP_SIZE if step_size is None else step_size, lora=None if lora is None else str(lora),
                    batch_size=batch_size, execution=execution, engine=engine)
    if reward_model is not None:
        from l2s.reward import load_reward_model
        from l2s.reward.identity import reward_identity

        run.scorer = load_reward_model(reward_model_path(reward_model))
    started = time.perf_counter()
    modes = modes or BOTH_MODES
    chosen = [replace(part, modes=tuple(m for m in part.modes if m in modes))
              for part in bench_parts(scale, seeds, position_prompts=position_prompts)
              if parts is None or part.key in parts]
    results = [_run_part(run, part, Path(out_dir), progress) for part in chosen if part.modes]
    plain = None
    if parts is None or plain_part.KEY in parts:
        prompts = plain_part.plain_prompts(max(4, int(round(PLAIN_PROMPTS * scale))), prompt_seed=BENCH_PROMPT_SEED)
        steerer = run.steerer("dual")
        settings = {"pipeline": str(pipeline_dir), "lora": run.lora, "sampling": steerer.sampling_options(),
                    **run.speed, **_digests(run)}
        plain = plain_part.run_plain_part(steerer, run.detector, prompts, seeds, Path(out_dir), batch_size, settings,
                                          progress)
    comparison = None
    if classifier_data is not None:
        comparison = world().on_main(lambda: classifier_comparison(classifiers, classifier_data))
    settings = {"pipeline": str(pipeline_dir), "classifiers": {k: str(v) for k, v in classifiers.items()},
                "scale": scale, "position_prompts": position_prompts, "step_size": run.step_size,
                "sampling": run.sampling(), "seeds": list(seeds), "lora": run.lora,
                "reward_model": None if reward_model is None else reward_identity(str(reward_model)),
                "modes": list(modes), "image_size": image_size(run.pipe), **run.speed, **_digests(run),
                "wall_time_s": round(time.perf_counter() - started, 1)}
    return {"parts": results, "no_relation": plain, "classifier_comparison": comparison, "settings": settings}


def _digests(run: _BenchRun, classifier: str | Path | None = None) -> dict:
    """Weights fingerprints for a part's settings: retrained weights at the same paths never resume."""
    return weights_fingerprints(run.pipeline_dir, classifier, run.lora, pipeline_key="pipeline_digest")


def _run_part(run: _BenchRun, part: BenchPart, out: Path, progress: bool) -> dict:
    """Generate and judge one part (resumable :func:`l2s.evaluation.run_eval` run in ``out/<key>``)."""
    from l2s.evaluation import run_eval
    from l2s.evaluation.run_dir import refuse_changed_settings

    steerer = run.steerer(part.classifier)
    schedule = _schedule_for(part.schedule, run.step_size)
    settings = {"pipeline": str(run.pipeline_dir), "classifier": str(run.classifiers[part.classifier]),
                "schedule": json.loads(json.dumps(schedule.to_json())), "part": part.key,  # as stored
                "sampling": steerer.sampling_options(), **({"lora": run.lora} if run.lora else {}), **run.speed,
                **_digests(run, run.classifiers[part.classifier])}
    world().on_main(lambda: refuse_changed_settings(   # in the bench's words: it has no --restart
        out / part.key, settings, fix="use another --out, or the same settings to resume it"))
    report = run_eval(steerer, part.specs, run.detector, out / part.key, seeds=part.seeds, modes=part.modes,
                      schedule=schedule, settings=settings, detector_name="shapes",
                      contact_sheets=part.key == "position", progress=progress, batch_size=run.batch_size,
                      progress_label=f"l2s shapes bench {part.key}")   # which of the parts the bar counts
    modes = {mode: mode_scores(mode_report.records, part.specs, run.detector)
             for mode, mode_report in report.modes.items()}
    if run.scorer is not None:
        for mode, mode_report in report.modes.items():
            modes[mode].update(world().on_main(   # one process scores; all get the columns
                lambda records=mode_report.records: reward_columns(run.scorer, records, part.specs, out / part.key)))
    copied_modes: list[str] = []
    if part.key == "position":
        run.position_records = {mode: mode_report.records for mode, mode_report in report.modes.items()}
    elif part.position_subset and run.position_records:
        copied_modes = _copy_position_modes(run, part, modes)
    records = [record for mode_report in report.modes.values() for record in mode_report.records]
    return {"key": part.key, "label": part.label, "n_prompts": len(part.specs), "seeds": list(part.seeds),
            "schedule": schedule.name, "classifier": part.classifier, "modes": modes,
            "copied_modes": copied_modes,
            "images": {"total": len(records), "resumed": sum(r.status in ("resumed", "rescored") for r in records)}}


def _schedule_for(name: str | Any, step_size: float):
    """A preset by name (with the run's step size), or the schedule object itself."""
    return named_schedule(name, step_size=step_size) if isinstance(name, str) else name


def _copy_position_modes(run: _BenchRun, part: BenchPart, modes: dict) -> list[str]:
    """A part that only steers takes the two-object run's images of the same prompts and seeds:
    its base, and its reference dual-classifier steering, so every row compares like with like."""
    def subset(records):
        return [r for r in records if int(r.meta["prompt_index"]) < len(part.specs)
                and int(r.meta["seed"]) in part.seeds]

    copied = {"base": "base", "reference_dual": "steered"}
    copied = {name: mode for name, mode in copied.items() if mode in run.position_records}
    for name, mode in copied.items():
        modes[name] = mode_scores(subset(run.position_records[mode]), part.specs, run.detector)
    return list(copied)


def classifier_comparison(classifiers: dict[str, str | Path], classifier_data: str | Path) -> dict:
    """The dual and pos-only classifiers on their data's held-out maps, before any steering: paired
    against each other per prompt type, and each one's relation leakage (:func:`l2s.training.relation_leakage`)."""
    from l2s.classifier import RelationClassifier
    from l2s.training import compare_hits, leakage_from_hits, record_hits

    hits = {name: record_hits(RelationClassifier.load(classifiers[name]), classifier_data)
            for name in ("dual", "pos_only")}  # one pass per classifier serves both measures
    by_type = compare_hits(hits["dual"], hits["pos_only"])
    return {"data": str(classifier_data), "split": "val",
            "by_prompt_type": {kind: c.to_dict() for kind, c in by_type.items()},
            "leakage": {name: {step: c.to_dict() for step, c in leakage_from_hits(h, classifier_data).items()}
                        for name, h in hits.items()}}
