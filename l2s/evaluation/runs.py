"""Spatial-accuracy runs: generate every prompt with and without steering, score, report.

``l2s eval`` is a thin front end to :func:`run_eval` (generate, then score) and
:func:`score_image_folder` (score a GenEval-layout folder that something else generated).
The geometry, detectors and per-image scoring live in :mod:`l2s.evaluation`; this module adds
prompt sets (including the shapes world's), the run directory, resuming and the comparison table.

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
``l2s eval --images OUT/base``, can score them again with another detector.

Resuming: an image's JSON is written after its PNG (atomically), so it marks a finished image.
A rerun skips images whose JSON was made with the same rule and detector, re-scores images
whose JSON used another one, and generates the rest.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from l2s.errors import L2SError, UnsupportedRelationError
from .scoring import (
    GENEVAL,
    GENEVAL_POSITIONS,
    MULTI_RELATION_PATTERNS,
    RULES,
    T2I_COMPBENCH,
    CheckResult,
    Detection,
    Detector,
    ImageResult,
    PromptSpec,
    RelationCheck,
    Summary,
    _unique_prompts,
    contact_sheet,
    geneval_position_prompts,
    multi_relation_prompts,
    score_image,
    summarise,
)
from l2s.relations import DIAGONAL, DIRECTIONAL, NON_DIRECTIONAL, PROMPT_PHRASE

BASE, STEERED, IMAGES = "base", "steered", "images"
MODES = (BASE, STEERED)
DEFAULT_PROMPT_COUNT = 100  # GenEval's position task has 100 prompts
SHEET_PAGE = 64  # images per contact-sheet page
RUN_FILE, PROMPTS_FILE, RESULTS_FILE, SUMMARY_FILE = "run.json", "prompts.jsonl", "results.jsonl", "summary.json"
PROMPT_SET_HELP = ("geneval (GenEval-style position prompts over COCO classes), multi:N_OBJ,N_REL "
                   "(Learn-to-Steer multi-relation prompts), shapes (shapes-world position prompts), "
                   "shapes:N_OBJ,N_REL (shapes-world multi-relation prompts), or a file: .jsonl "
                   "(GenEval metadata lines or PromptSpec lines) or .txt (one prompt per line; checks "
                   "from the relation parser)")


# ----------------------------------------------------------------------------------------------
# Prompt sets
# ----------------------------------------------------------------------------------------------

def _shapes_palette(shapes: Sequence[str] | None, colours: Sequence[str] | None) -> tuple[list[str], list[str]]:
    from l2s.shapes import COLOURS, SHAPES

    shapes, colours = list(shapes or SHAPES), list(colours or COLOURS)
    unknown = [s for s in shapes if s not in SHAPES] + [c for c in colours if c not in COLOURS]
    if unknown:
        raise L2SError(f"unknown shapes-world names {', '.join(unknown)} "
                       f"(shapes: {', '.join(SHAPES)}; colours: {', '.join(COLOURS)})")
    return shapes, colours


def _draw_shape_objects(rng: np.random.Generator, count: int, shapes: list[str], colours: list[str]) -> list[str]:
    # Distinct colours, so that every object is its own colour segment for ShapesDetector even
    # when generated objects touch (two red objects that touch would merge into one component).
    picked = rng.choice(len(colours), size=count, replace=False)
    return [f"{colours[c]} {shapes[int(rng.integers(len(shapes)))]}" for c in picked]


def shapes_position_prompts(n: int = DEFAULT_PROMPT_COUNT, seed: int = 0,
                            relations: Sequence[str] = GENEVAL_POSITIONS,
                            shapes: Sequence[str] | None = None,
                            colours: Sequence[str] | None = None) -> list[PromptSpec]:
    """``n`` distinct shapes-world prompts ``a <colour> <shape> <relation> a <colour> <shape>``.

    Worded like the shapes model's training captions ("a red circle to the left of a blue
    square"); the two objects have different colours; the check's labels ("red circle") are what
    :class:`l2s.shapes.ShapesDetector` looks for. Drawn with ``numpy.random.default_rng(seed)``.
    """
    shapes, colours = _shapes_palette(shapes, colours)
    if len(colours) < 2:
        raise L2SError("shapes prompts need at least two colours")
    relations = list(relations)
    rng = np.random.default_rng(seed)

    def draw() -> PromptSpec:
        a, b = _draw_shape_objects(rng, 2, shapes, colours)
        relation = relations[int(rng.integers(len(relations)))]
        return PromptSpec(f"a {a} {PROMPT_PHRASE[relation]} a {b}", (RelationCheck(a, relation, b),),
                          tag="position")

    capacity = math.perm(len(colours), 2) * len(shapes) ** 2 * len(relations)
    return _unique_prompts(n, capacity, draw)


def shapes_multi_relation_prompts(n_objects: int, n_relations: int, n: int = DEFAULT_PROMPT_COUNT,
                                  seed: int = 0, shapes: Sequence[str] | None = None,
                                  colours: Sequence[str] | None = None) -> list[PromptSpec]:
    """Multi-relation shapes-world prompts in Learn-to-Steer's patterns (see
    :func:`l2s.evaluation.multi_relation_prompts`), e.g. (3, 2): "a red circle to the left of a
    blue square above a green triangle". No "a photo of" prefix (the shapes captions have none);
    objects have distinct colours; relations are distinct directions; each chained pair is a check.
    """
    key = (n_objects, n_relations)
    if key not in MULTI_RELATION_PATTERNS:
        known = ", ".join(f"{o},{r}" for o, r in MULTI_RELATION_PATTERNS)
        raise L2SError(f"no prompt pattern for {n_objects} objects / {n_relations} relations (known: {known})")
    shapes, colours = _shapes_palette(shapes, colours)
    if len(colours) < n_objects:
        raise L2SError(f"{n_objects} objects of distinct colours need {n_objects} colours, got {len(colours)}")
    rng = np.random.default_rng(seed)

    def draw() -> PromptSpec:
        names = _draw_shape_objects(rng, n_objects, shapes, colours)
        relations = [DIRECTIONAL[i] for i in rng.choice(len(DIRECTIONAL), size=n_relations, replace=False)]
        clauses, checks, start = [], [], 0
        for length in MULTI_RELATION_PATTERNS[key]:
            chain = names[start:start + length]
            text = f"a {chain[0]}"
            for subject, obj in zip(chain, chain[1:]):
                relation = relations[len(checks)]
                text += f" {PROMPT_PHRASE[relation]} a {obj}"
                checks.append(RelationCheck(subject, relation, obj))
            clauses.append(text)
            start += length
        return PromptSpec(" and ".join(clauses), tuple(checks), tag=f"{n_objects}obj_{n_relations}rel")

    capacity = (math.perm(len(colours), n_objects) * len(shapes) ** n_objects
                * math.perm(len(DIRECTIONAL), n_relations))
    return _unique_prompts(n, capacity, draw)


def geneval_metadata(spec: PromptSpec) -> dict[str, Any]:
    """The ``metadata.jsonl`` line of a prompt folder.

    GenEval's own format (``include`` clauses with ``"position": [relation, index]``) when GenEval
    can express the checks (its four relation words, at most one relation per subject); the
    referenced objects come first, so a two-object prompt gives exactly GenEval's line. Otherwise
    :meth:`PromptSpec.to_dict` (``checks``), which GenEval cannot score but ``l2s eval`` can.
    """
    subjects = [c.subject for c in spec.checks]
    if not spec.checks or len(set(subjects)) < len(subjects) or any(
            c.relation not in GENEVAL_POSITIONS for c in spec.checks):
        return spec.to_dict()
    order = list(reversed(spec.objects))
    include = [{"class": name, "count": 1} for name in order]
    for check in spec.checks:
        include[order.index(check.subject)]["position"] = [check.relation, order.index(check.object)]
    return {"tag": spec.tag, "include": include, "prompt": spec.prompt}


def spec_from_metadata(data: dict[str, Any]) -> PromptSpec | None:
    """A PromptSpec from a GenEval metadata line or a ``PromptSpec.to_dict`` line.

    GenEval lines without a ``position`` clause (its counting, colour, ... tasks) give None.
    """
    if not isinstance(data, dict) or "prompt" not in data:
        raise ValueError("expected a JSON object with a 'prompt'")
    if "checks" in data:
        return PromptSpec.from_dict(data)
    if "include" not in data:
        raise ValueError("neither 'checks' (PromptSpec) nor 'include' (GenEval metadata)")
    include = data["include"]
    # Reversed: GenEval lists the referenced object first; this restores the prompt's order.
    checks = [RelationCheck(item["class"], item["position"][0], include[int(item["position"][1])]["class"])
              for item in reversed(include) if item.get("position")]
    if not checks:
        return None
    return PromptSpec(data["prompt"], tuple(checks), tag=data.get("tag", "position"))


def read_prompt_file(path: str | Path) -> tuple[list[PromptSpec], int]:
    """Prompts of a file, and how many of its lines carry no spatial relation (skipped).

    ``.jsonl``: GenEval metadata lines (e.g. its ``evaluation_metadata.jsonl``, whose non-position
    lines are skipped) or ``PromptSpec.to_dict`` lines. Any other file: one prompt per line (e.g.
    T2I-CompBench's ``spatial_val.txt``), checked on the relations :func:`l2s.parsing.parse_prompt`
    finds; prompts without one are skipped.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise L2SError(f"cannot read the prompt file {path}: {error.strerror}") from None
    specs: list[PromptSpec] = []
    skipped = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                spec = spec_from_metadata(json.loads(line))
            except json.JSONDecodeError:
                raise L2SError(f"{path}:{number}: not a JSON line") from None
            except (KeyError, IndexError, TypeError, ValueError) as error:
                raise L2SError(f"{path}:{number}: not a GenEval metadata or PromptSpec line ({error})") from None
        else:
            spec = _spec_from_text(line.strip())
        if spec is None:
            skipped += 1
        else:
            specs.append(spec)
    return specs, skipped


def _spec_from_text(prompt: str) -> PromptSpec | None:
    from l2s.parsing import parse_prompt

    parsed = parse_prompt(prompt)
    checks = [RelationCheck(t.subject, t.relation, t.object) for t in parsed.triplets]
    for n in parsed.non_directional:
        try:  # "next to", "near", ... have T2I-CompBench's distance rule; "behind" has no rule at all
            checks.append(RelationCheck(n.subject, n.relation, n.object))
        except UnsupportedRelationError:
            pass
    return PromptSpec(prompt, tuple(checks), tag="spatial") if checks else None


_PATTERN_SPEC = re.compile(r"^(multi|shapes):(\d+),(\d+)$")


def is_shapes_prompt_set(name: str) -> bool:
    """Whether ``--prompts name`` draws shapes-world prompts."""
    return name == "shapes" or name.startswith("shapes:")


def resolve_prompt_set(name: str, n: int | None = None, seed: int = 0) -> tuple[list[PromptSpec], int]:
    """The prompts named by ``--prompts`` (see :data:`PROMPT_SET_HELP`), and the count of file
    lines skipped for having no spatial relation. ``n`` defaults to 100 for generated sets and to
    the whole file for a file."""
    if n is not None and n < 1:
        raise L2SError(f"--n-prompts must be at least 1, got {n}")
    count = n or DEFAULT_PROMPT_COUNT
    if name == "geneval":
        return geneval_position_prompts(count, seed), 0
    if name == "shapes":
        return shapes_position_prompts(count, seed), 0
    match = _PATTERN_SPEC.match(name)
    if match:
        kind, n_objects, n_relations = match.group(1), int(match.group(2)), int(match.group(3))
        build = shapes_multi_relation_prompts if kind == "shapes" else multi_relation_prompts
        return build(n_objects, n_relations, count, seed), 0
    if Path(name).is_file():
        specs, skipped = read_prompt_file(name)
        if not specs:
            raise L2SError(f"no prompt with a spatial relation in {name}")
        return specs[:n] if n else specs, skipped
    if name.startswith(("multi", "shapes:")):
        raise L2SError(f"bad --prompts {name!r}: write multi:N_OBJ,N_REL or shapes:N_OBJ,N_REL, e.g. multi:3,2")
    raise L2SError(f"bad --prompts {name!r}: not a prompt set (geneval, shapes, multi:N_OBJ,N_REL, "
                   f"shapes:N_OBJ,N_REL) nor an existing file")


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"0,1,2,3"`` or ranges ``"0-3"`` (inclusive), mixed freely; no duplicates."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise L2SError(f"bad --seeds {text!r}: use non-negative integers such as 0,1,2,3 or 0-3")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise L2SError(f"bad --seeds range {part!r}: the end is before the start")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise L2SError(f"bad --seeds {text!r}: a seed is repeated")
    return seeds


# ----------------------------------------------------------------------------------------------
# Detectors and up-front checks
# ----------------------------------------------------------------------------------------------

def load_detector(name: str, threshold: float = 0.3, device: str = "cpu") -> Detector:
    """``"shapes"``: the exact shapes-world detector; otherwise a local transformers detector
    directory (OWLv2, OWL-ViT, Grounding DINO, CLIPSeg) with confidence ``threshold``."""
    if name == "shapes":
        from l2s.shapes import ShapesDetector

        return ShapesDetector()
    from .scoring import TransformersDetector

    return TransformersDetector(name, threshold=threshold, device=device)


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


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (or a resumed run) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def result_from_record(record: dict[str, Any]) -> ImageResult:
    """Inverse of ``ImageResult.to_dict`` (extra keys such as ``meta`` are ignored)."""
    detections = {label: (Detection(d["label"], tuple(d["box"]), d["score"]) if d else None)
                  for label, d in record["detections"].items()}
    return ImageResult(correct=record["correct"], score=record["score"], reason=record["reason"],
                       checks=[CheckResult(**c) for c in record["checks"]], detections=detections,
                       prompt=record.get("prompt", ""), tag=record.get("tag", ""), name=record.get("name", ""))


@dataclass
class ImageRecord:
    """One scored image: its result, the PNG it came from and its run metadata."""

    result: ImageResult
    image_path: Path
    meta: dict[str, Any]
    status: str  # "generated" (then scored), "scored" (an existing image), "rescored" or "resumed"


def _score(detector: Detector, image: Image.Image, spec: PromptSpec, rule: str, name: str) -> tuple[ImageResult, float]:
    started = time.perf_counter()
    detections = detector.detect(image, spec.objects)
    result = score_image(detections, spec.checks, rule=rule, image_size=image.size)
    result.prompt, result.tag, result.name = spec.prompt, spec.tag, name
    return result, time.perf_counter() - started


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
# Reports
# ----------------------------------------------------------------------------------------------

def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else 0.0


@dataclass
class ModeReport:
    """Scores of one mode (base, steered, or a scored image folder)."""

    summary: Summary
    records: list[ImageRecord] = field(repr=False)

    @property
    def generate_s_per_image(self) -> float:
        return _mean(r.meta.get("generate_s") for r in self.records)

    @property
    def score_s_per_image(self) -> float:
        return _mean(r.meta.get("score_s") for r in self.records)

    def status_counts(self) -> dict[str, int]:
        """How many images were generated, scored, re-scored or resumed in this call."""
        return dict(Counter(r.status for r in self.records))

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary.to_dict(), "generate_s_per_image": self.generate_s_per_image,
                "score_s_per_image": self.score_s_per_image, "status_counts": self.status_counts()}


@dataclass
class EvalReport:
    """A whole run: one :class:`ModeReport` per mode, the settings and the wall time."""

    modes: dict[str, ModeReport]
    settings: dict[str, Any]
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"settings": self.settings, "wall_time_s": self.wall_time_s,
                                "modes": {name: m.to_dict() for name, m in self.modes.items()}}
        if BASE in self.modes and STEERED in self.modes:
            data["accuracy_gain"] = self.modes[STEERED].summary.accuracy - self.modes[BASE].summary.accuracy
        return data

    def table(self) -> str:
        """Printable comparison: overall, per tag, per relation; one column per mode."""
        names = list(self.modes)
        summaries = [self.modes[n].summary for n in names]

        def cell(pair: Sequence[int] | None) -> str:
            if not pair:
                return "-"
            correct, total = pair
            return f"{correct}/{total} {correct / total if total else 0.0:.3f}"

        rows: list[tuple[str, list[str]]] = [("overall (images)", [cell((s.n_correct, s.n_images)) for s in summaries])]
        tags = sorted({t for s in summaries for t in s.per_tag})
        if len(tags) > 1:
            rows += [(f"tag {t}", [cell(s.per_tag.get(t)) for s in summaries]) for t in tags]
        relations = sorted({r for s in summaries for r in s.per_relation})
        rows += [(f"relation {r}", [cell(s.per_relation.get(r)) for s in summaries]) for r in relations]
        rows.append(("prompts with any correct", [cell((s.n_prompts_any_correct, s.n_prompts)) for s in summaries]))
        rows.append((f"mean score ({summaries[0].rule})" if summaries else "mean score",
                     [f"{s.mean_score:.3f}" for s in summaries]))
        if any(self.modes[n].generate_s_per_image for n in names):
            rows.append(("generation s/image", [f"{self.modes[n].generate_s_per_image:.3f}" for n in names]))
        rows.append(("scoring s/image", [f"{self.modes[n].score_s_per_image:.3f}" for n in names]))
        first = max(len(r[0]) for r in rows)
        width = max([len(n) for n in names] + [len(c) for _, cells in rows for c in cells])
        lines = [f"{'':<{first}}  " + "  ".join(f"{n:>{width}}" for n in names),
                 "-" * (first + (width + 2) * len(names))]
        lines += [f"{label:<{first}}  " + "  ".join(f"{c:>{width}}" for c in cells) for label, cells in rows]
        if BASE in self.modes and STEERED in self.modes:
            gain = self.to_dict()["accuracy_gain"]
            lines.append(f"{'steered - base accuracy':<{first}}  {gain:+.3f}")
        lines.append(f"{'wall time':<{first}}  {self.wall_time_s:.1f} s")
        return "\n".join(lines)


def _write_outputs(out: Path, report: EvalReport, contact_sheets: bool, columns: int = 8) -> list[Path]:
    """results.jsonl, summary.json and the contact sheets (images interleaved across modes)."""
    with open(out / RESULTS_FILE, "w", encoding="utf-8") as lines:
        for mode in report.modes.values():
            for record in mode.records:
                lines.write(json.dumps({**record.result.to_dict(), "meta": record.meta}, default=str) + "\n")
    _write_json(out / SUMMARY_FILE, report.to_dict())
    for stale in out.glob("contact_sheet_*.png"):  # a smaller rerun must not leave old pages behind
        stale.unlink()
    if not contact_sheets:
        return []
    # Interleave so that the same prompt and seed sit side by side in every mode.
    per_mode = [m.records for m in report.modes.values()]
    tiles = [(name, r) for group in zip(*per_mode) for name, r in zip(report.modes, group)]
    pages = [tiles[i:i + SHEET_PAGE] for i in range(0, len(tiles), SHEET_PAGE)]
    paths = []
    for number, page in enumerate(pages, 1):
        images = [Image.open(r.image_path).convert("RGB") for _, r in page]
        labelled = [replace(r.result, prompt=f"[{name} s{r.meta.get('seed', '?')}] {r.result.prompt}")
                    for name, r in page]
        paths.append(contact_sheet(images, labelled, out / f"contact_sheet_{number:02d}.png", columns=columns))
    return paths


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------

def _claim_run_dir(out: Path, settings: dict[str, Any]) -> None:
    """Record the generation settings, or check a resumed run used the same ones."""
    previous = _read_json(out / RUN_FILE)
    if previous is not None and previous.get("generation") != settings:
        old = previous.get("generation") or {}

        def shown(d: dict, k: str) -> str:  # a setting an older version did not record says so
            return repr(d[k]) if k in d else "(not recorded)"

        changed = sorted(k for k in set(old) | set(settings) if shown(old, k) != shown(settings, k))
        details = ", ".join(f"{k}: {shown(old, k)} -> {shown(settings, k)}" for k in changed)
        raise L2SError(f"{out} holds a run made with other settings ({details}); "
                       "use another --out, or the same settings to resume it")
    _write_json(out / RUN_FILE, {"generation": settings})


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
    if not modes or any(m not in MODES for m in modes):
        raise L2SError(f"modes must be among {', '.join(MODES)}, got {modes}")
    if not specs:
        raise L2SError("no prompts to evaluate")
    if not seeds:
        raise L2SError("no seeds: give at least one")
    check_scorable(specs, rule, detector)
    # Every prompt must parse and fit the tokenizer before the first (slow) image is made.
    for index, spec in enumerate(specs):
        try:
            steerer.plan(spec.prompt)
        except L2SError as error:
            raise L2SError(f"prompt {index} ({spec.prompt!r}): {error}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(out, dict(settings or {}))
    with open(out / PROMPTS_FILE, "w", encoding="utf-8") as lines:
        lines.writelines(json.dumps(spec.to_dict()) + "\n" for spec in specs)
    scoring = {"rule": rule, "detector": detector_name}
    generate = dict(num_inference_steps=num_inference_steps, height=height, width=width,
                    guidance_scale=guidance_scale, schedule=schedule, progress=False)
    started = time.perf_counter()
    records: dict[str, list[ImageRecord]] = {mode: [] for mode in modes}
    jobs = [(index, seed, mode) for index in range(len(specs)) for seed in seeds for mode in modes]
    with tqdm(total=len(jobs), desc="l2s eval", unit="img", disable=not progress) as bar:
        for index, seed, mode in jobs:
            spec = specs[index]
            folder = out / mode / f"{index:05d}"
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            (folder / "metadata.jsonl").write_text(json.dumps(geneval_metadata(spec)) + "\n", encoding="utf-8")
            png = folder / "samples" / f"{seed:04d}.png"
            record_path = png.with_suffix(".json")
            name = f"{mode}/{index:05d}/{seed:04d}"
            previous = _read_json(record_path)
            if previous is not None and previous.get("prompt") != spec.prompt:
                raise L2SError(f"{record_path} was made for the prompt {previous.get('prompt')!r}, not "
                               f"{spec.prompt!r}; use another --out for other prompts")
            if previous is not None and previous.get("scoring") == scoring and png.is_file():
                record = ImageRecord(result_from_record(previous), png, previous["meta"], "resumed")
            else:
                if previous is not None and png.is_file():
                    image, meta, status = Image.open(png).convert("RGB"), previous["meta"], "rescored"
                else:
                    generated = steerer(spec.prompt, seed=seed, steer=mode == STEERED, **generate)
                    image, status = generated.images[0], "generated"
                    image.save(png)
                    meta = {"mode": mode, "prompt_index": index, "seed": seed,
                            "image": str(png.relative_to(out)), "generate_s": generated.timings["total"],
                            **_steering_meta(generated, mode)}
                result, meta["score_s"] = _score(detector, image, spec, rule, name)
                _write_json(record_path, {**result.to_dict(), "meta": meta, "scoring": scoring})
                record = ImageRecord(result, png, meta, status)
            records[mode].append(record)
            bar.update()
            bar.set_postfix({m: f"{np.mean([r.result.correct for r in rs]):.2f}" for m, rs in records.items() if rs})
    report = EvalReport(
        modes={mode: ModeReport(summarise([r.result for r in rs], rule), rs) for mode, rs in records.items()},
        settings={**(settings or {}), "seeds": list(seeds), "modes": modes, "n_prompts": len(specs), **scoring},
        wall_time_s=time.perf_counter() - started)
    _write_outputs(out, report, contact_sheets, columns=8)
    return report


_DIGITS = re.compile(r"^\d+$")
_SAMPLE = re.compile(r"^\d+\.png$")  # GenEval scores only these files


def score_image_folder(images_dir: str | Path, detector: Detector, out_dir: str | Path, *,
                       rule: str = GENEVAL, detector_name: str = "custom", contact_sheets: bool = True,
                       progress: bool = True) -> EvalReport:
    """Score a GenEval-layout folder (``<digits>/metadata.jsonl`` + ``<digits>/samples/<digits>.png``).

    Folders whose metadata has no position clause (GenEval's other tasks) are skipped. Per-image
    records go to ``OUT/images/<folder>/samples/<n>.json`` (a rerun with the same rule and
    detector skips them), plus ``results.jsonl``, ``summary.json`` and contact sheets in OUT.
    """
    images_dir, out = Path(images_dir), Path(out_dir)
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
    check_scorable([spec for _, spec, _ in jobs], rule, detector)
    out.mkdir(parents=True, exist_ok=True)
    scoring = {"rule": rule, "detector": detector_name}
    started = time.perf_counter()
    records: list[ImageRecord] = []
    for folder, spec, png in tqdm(jobs, desc="l2s eval", unit="img", disable=not progress):
        record_path = out / IMAGES / folder.name / "samples" / f"{png.stem}.json"
        name = f"{folder.name}/{png.stem}"
        previous = _read_json(record_path)
        if (previous is not None and previous.get("scoring") == scoring
                and previous["meta"].get("image") == str(png.resolve())):
            records.append(ImageRecord(result_from_record(previous), png, previous["meta"], "resumed"))
            continue
        try:
            image = Image.open(png).convert("RGB")
        except OSError as error:
            raise L2SError(f"cannot read the image {png}: {error}") from None
        result, score_s = _score(detector, image, spec, rule, name)
        meta = {"mode": IMAGES, "folder": folder.name, "seed": int(png.stem), "image": str(png.resolve()),
                "score_s": score_s}
        record_path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(record_path, {**result.to_dict(), "meta": meta, "scoring": scoring})
        records.append(ImageRecord(result, png, meta, "rescored" if previous else "scored"))
    report = EvalReport(modes={IMAGES: ModeReport(summarise([r.result for r in records], rule), records)},
                        settings={"images": str(images_dir.resolve()), "folders_without_position": skipped,
                                  **scoring},
                        wall_time_s=time.perf_counter() - started)
    _write_outputs(out, report, contact_sheets)
    return report
