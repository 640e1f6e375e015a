"""Generate images into a folder: steered, the unsteered image of the same seed beside it, reports.

:func:`generate_image` writes one image's files into the folder itself; :func:`generate_images`
makes one image per :class:`~.image_runs.ImageJob`, ``batch_size`` per steering call, each in its
own sub-folder, with ``index.json`` rewritten after every batch (:mod:`.image_runs`). Lines meant
for a person (why an image is not steered, steering's warnings) go to ``say``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from l2s.errors import L2SError
from l2s.files import atomic_write_json
from l2s.versions import software_versions

from .image_runs import MAPS_DIR, ImageJob, Resume, batches, overview_pages, remove_earlier_outputs, write_index
from .pictures import overview_sheet, probability_plot, side_by_side
from .records import open_rgb, save_png

OVERVIEW_PAGE = 32   # images per overview page


@dataclass(frozen=True)
class Verdict:
    """A judge's answer on one image: whether it shows the prompt's relations (None: the prompt can
    never be judged, ``reason`` says why) and each relation's, as ``{"subject", "relation", "object",
    "holds", "reason"}`` (``holds`` None: that relation can never be judged)."""

    holds: bool | None
    relations: tuple[dict, ...] = ()
    reason: str = ""


Judge = Callable[[object, str], "bool | Verdict | None"]   # (image, prompt) -> holds or a Verdict (None: no judge)
VERDICT_KEYS = ("verdict", "relation_verdicts", "no_verdict")   # what a judge adds to a report and index entry


@dataclass
class GenerateOptions:
    """How each image is made: steered or not, its unsteered twin, the schedule and the sampling
    keyword arguments of the steering pipeline call; ``judge`` (optional) gives a verdict per image;
    ``context`` is copied into every report."""

    steer: bool = True
    baseline: bool = True
    schedule: object = None
    sampling: dict = field(default_factory=dict)
    judge: Judge | None = None
    context: dict = field(default_factory=dict)
    disabled_by: str = "steer=False"   # how a report names an unsteered run


def _silent(line: str) -> None:
    return None


def write_images(folder: Path, image, baseline, records) -> list[str]:
    """image.png; the unsteered image and the comparison when given; the probability plot of a
    steered image's records. The names written."""
    save_png(image, folder / "image.png")
    written = ["image.png"]
    if baseline is not None:
        save_png(baseline, folder / "image_unsteered.png")
        save_png(side_by_side(baseline, image), folder / "comparison.png")
        written += ["image_unsteered.png", "comparison.png"]
    if records:
        save_png(probability_plot(records), folder / "probability.png")
        written.append("probability.png")
    return written


def verdicts(judge: Judge | None, prompt: str, image, unsteered) -> dict:
    """The report's :data:`VERDICT_KEYS` by ``judge`` ({} without a judge for the prompt): ``verdict``,
    whether each image shows the prompt's relations (absent when the prompt can never be judged: then
    ``no_verdict`` says why, and the counts skip it), and ``relation_verdicts``, each relation's."""
    first = _as_verdict(judge(image, prompt)) if judge is not None else None
    if first is None:
        return {}
    judged = {"image": first}
    if unsteered is not None:
        judged["image_unsteered"] = _as_verdict(judge(unsteered, prompt))
    keys: dict = {"verdict": {name: v.holds for name, v in judged.items()}} if first.holds is not None \
        else {"no_verdict": first.reason}
    if first.relations:
        keys["relation_verdicts"] = {name: list(v.relations) for name, v in judged.items()}
    return keys


def _as_verdict(answer) -> Verdict | None:
    """A judge's answer as a :class:`Verdict` (a plain bool: the whole prompt's)."""
    if answer is None or isinstance(answer, Verdict):
        return answer
    return Verdict(bool(answer))


def _say_outcome(say, plan, outcome, options: GenerateOptions, where: str = "") -> None:
    if not plan.steered:          # steering asked for and none possible: a warning
        if options.steer:
            say(f"warning: {where}{plan.parsed.describe()}")
    elif outcome.warning() and options.steer:
        say(f"warning: {where}{outcome.warning()}")


def generate_image(steerer, prompt: str, seed: int, out: Path, options: GenerateOptions,
                   recorder=None, say: Callable[[str], None] = _silent) -> tuple[dict, list[str]]:
    """One image (and its unsteered twin) into ``out``, replacing an earlier one-image result there:
    (its report, the names written). ``recorder``: a :class:`~l2s.pipelines.attention_maps.MapRecorder`
    attached to ``steerer``, whose maps are drawn into ``out/maps``."""
    from l2s.steer import disabled_by

    from .attention_pictures import save_attention_grids, step_notes

    kwargs = dict(options.sampling, seed=seed)
    result = steerer(prompt, steer=options.steer, schedule=options.schedule, **kwargs)
    if recorder is not None:
        recorder.detach()
    result.outcome = disabled_by(result.outcome, options.disabled_by)
    steered = result.outcome.steered   # what ran: no update kept means no steered image
    _say_outcome(say, result.plan, result.outcome, options)
    out = Path(out)
    report = {"prompt": prompt, **options.context, "seed": seed, **result.report(), "versions": software_versions()}
    baseline = None
    if steered and options.baseline:
        baseline = steerer(prompt, steer=False, schedule=options.schedule, **kwargs)  # the same sampling
        report["timings_s"]["unsteered_total"] = baseline.timings["total"]
    remove_earlier_outputs(out)      # only now: an interrupted generation leaves the earlier image
    written = write_images(out, result.images[0], baseline and baseline.images[0],
                           result.diagnostics.records if steered else None)
    report.update(verdicts(options.judge, prompt, result.images[0], baseline and baseline.images[0]))
    if recorder is not None and recorder.steps:
        maps = save_attention_grids(result.images[0], recorder.steps, out / MAPS_DIR,
                                    notes=step_notes(result.diagnostics.records))
        written += [str(path.relative_to(out)) for path in maps]
    return report, written


def write_image_report(out: Path, report: dict, settings: dict, started: float) -> str:
    """One image's ``report.json`` in ``out``: :func:`generate_image`'s ``report`` with the
    ``settings`` that made it (a rerun with them makes it again) and the command's seconds since
    ``started`` (a ``time.perf_counter()``); the name written."""
    report["settings"] = settings
    report["timings_s"]["command_total"] = time.perf_counter() - started
    atomic_write_json(Path(out) / "report.json", report)
    return "report.json"


def _check_prompts(steerer, jobs: list[ImageJob]) -> None:
    """What would refuse a prompt only when its batch runs (after the earlier batches' images, and
    unnamed): every distinct prompt is tried first, named by its number, before the folder is touched."""
    from l2s.pipelines.flux import check_text_window   # diffusers: loaded when a run starts, not on import

    numbers: dict[str, int] = {}
    for job in jobs:
        numbers.setdefault(job.prompt, job.prompt_number)
    for prompt, number in numbers.items():
        try:
            if hasattr(steerer, "plan"):
                steerer.plan(prompt)      # its objects' tokens, its relations' classes; FLUX's, the T5 window
            elif getattr(steerer, "pipe", None) is not None:
                check_text_window(steerer.pipe, prompt)
        except L2SError as error:
            raise type(error)(f"prompt {number} ({prompt!r}): {error}") from None


def generate_images(steerer, jobs: list[ImageJob], out: Path, options: GenerateOptions, *, resume: Resume,
                    source: str, settings: dict, batch_size: int, started: float | None = None,
                    say: Callable[[str], None] = _silent) -> tuple[list[dict], list[str]]:
    """Every job not finished in ``resume`` (:func:`~.image_runs.open_image_run`), ``batch_size``
    per steering call: (index entries of every image, the file names written per folder)."""
    out, started = Path(out), time.perf_counter() if started is None else started
    _check_prompts(steerer, jobs)    # before the folder is touched
    if resume.entries is None:
        remove_earlier_outputs(out)
        write_index(out, source, batch_size, [], jobs, settings, 0.0)   # a kill in the first batch resumes
    elif resume.entries:
        say(f"resuming: {len(resume.entries)} of {len(jobs)} images already in {out}")
    entries = list(resume.entries or [])
    done, versions, names = {e["folder"] for e in entries}, software_versions(), []
    with _images_bar(len(jobs), len(done), options) as bar:   # each call's own bar of steps shows below it
        for batch in batches([job for job in jobs if job.folder not in done], batch_size):
            for job, report, written in generate_batch(steerer, batch, out, options, say):
                report = {"prompt": job.prompt, **options.context, "seed": job.seed, **report, "versions": versions}
                atomic_write_json(out / job.folder / "report.json", report)
                names += [name for name in written + ["report.json"] if name not in names]
                entries.append({"prompt": job.prompt, "seed": job.seed, "folder": job.folder,
                                "steered": report["steered"],
                                **{key: report[key] for key in VERDICT_KEYS if key in report}})
                bar.update()
            write_index(out, source, batch_size, entries, jobs, settings,
                        resume.seconds + time.perf_counter() - started)
    order = {job.folder: i for i, job in enumerate(jobs)}
    write_overview(out, sorted(entries, key=lambda e: order[e["folder"]]))
    return entries, names


def write_overview(out: Path, entries: list[dict]) -> list[str]:
    """``overview_01.png``, ...: every image of the run in one picture per :data:`OVERVIEW_PAGE`
    (its comparison where it has one), captioned with its folder and prompt, framed by its verdict;
    earlier pages go first, so a smaller run leaves none behind. The names written."""
    for stale in overview_pages(out):
        (out / stale).unlink()
    names = []
    for number, start in enumerate(range(0, len(entries), OVERVIEW_PAGE), 1):
        tiles = [_overview_tile(out, entry) for entry in entries[start:start + OVERVIEW_PAGE]]
        names.append(f"overview_{number:02d}.png")
        save_png(overview_sheet(tiles), out / names[-1])   # a kill mid-page leaves no torn PNG
    return names


def _overview_tile(out: Path, entry: dict) -> tuple:
    folder = out / entry["folder"]
    picture = folder / "comparison.png"
    holds = (entry.get("verdict") or {}).get("image")
    caption = f"{entry['folder']}: {entry['prompt']}"
    picture = picture if picture.is_file() else folder / "image.png"
    if not picture.is_file():   # removed by hand since: the page still shows the others
        return Image.new("RGB", (64, 64), (128, 128, 128)), f"{caption} (image missing)", None
    return open_rgb(picture), caption, holds


def _images_bar(total: int, done: int, options: GenerateOptions) -> tqdm:
    shown = options.sampling.get("progress", True) and total > 1
    return tqdm(total=total, initial=done, desc="l2s generate", unit="img", disable=not shown)


def generate_batch(steerer, batch: list[ImageJob], out: Path, options: GenerateOptions,
                   say: Callable[[str], None] = _silent):
    """One steering call for the batch (and one unsteered call for its steered images): per image,
    (job, its report, the files written in its folder)."""
    from l2s.steer import disabled_by

    result = steerer([job.prompt for job in batch], seed=[job.seed for job in batch], steer=options.steer,
                     schedule=options.schedule, **options.sampling)
    result.outcomes = [disabled_by(outcome, options.disabled_by) for outcome in result.outcomes]
    steered = [i for i, outcome in enumerate(result.outcomes) if outcome.steered]
    baseline = None
    if steered and options.baseline:
        baseline = steerer([batch[i].prompt for i in steered], seed=[batch[i].seed for i in steered],
                           steer=False, schedule=options.schedule, **options.sampling)
    for i, (job, report) in enumerate(zip(batch, result.reports())):
        _say_outcome(say, result.plans[i], result.outcomes[i], options, where=f"{job.folder}: ")
        (out / job.folder).mkdir(parents=True, exist_ok=True)
        unsteered = baseline.images[steered.index(i)] if baseline and i in steered else None
        written = write_images(out / job.folder, result.images[i], unsteered,
                               result.diagnostics.for_image(i).records if i in steered else None)
        report.update(verdicts(options.judge, job.prompt, result.images[i], unsteered))
        # timings_s are the whole batch call's: "batch" says how many images shared it
        report["timings_s"] = dict(report["timings_s"])
        if baseline is not None:
            report["timings_s"]["unsteered_total"] = baseline.timings["total"]
        report["batch"] = {"images": len(batch), "position": i}
        yield job, report, written
