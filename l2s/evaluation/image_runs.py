"""A folder of generated images: which images, in which sub-folders, and resuming an interrupted run.

One image per prompt and seed. One image keeps the single-image layout (image.png, report.json in
the folder); more get a sub-folder each, ``pNN-sSSSS`` (prompt number, seed), and ``index.json``,
rewritten after every batch so that a rerun of the same images and settings resumes after its
finished ones and a run of other images is never silently mixed in.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from l2s.errors import UsageError
from l2s.files import atomic_write_json, remove_outputs, unrecorded_digests

from .settings import same_setting

INDEX_FILE = "index.json"
FOLDER_PATTERN = re.compile(r"p\d+-s\d+")   # what a rerun may remove as an earlier run's image folder
# What one image writes. A one-image rerun into the same folder replaces them (and removes those it
# does not write again, so no plot of an earlier run sits beside this run's report).
IMAGE_OUTPUTS = ("image.png", "image_unsteered.png", "comparison.png", "probability.png", "report.json")
MAPS_DIR = "maps"   # --save-maps grids: step_NN.png
OVERVIEW_PATTERN = re.compile(r"overview_\d+\.png")   # a run of several images: its pages of every image


@dataclass(frozen=True)
class ImageJob:
    prompt_number: int
    prompt: str
    seed: int
    folder: str   # below the run folder; "" for a single image


def image_jobs(prompts: list[str], seeds: list[int]) -> list[ImageJob]:
    """Every prompt with every seed, prompt-major; folders named when there is more than one image."""
    _check_job_lists(prompts, seeds)
    pairs = [(number, prompt, seed) for number, prompt in enumerate(prompts) for seed in seeds]
    if len(pairs) == 1:
        return [ImageJob(0, prompts[0], seeds[0], "")]
    prompt_width = max(2, len(str(len(prompts) - 1)))
    seed_width = max(4, len(str(max(seeds))))
    return [ImageJob(number, prompt, seed, f"p{number:0{prompt_width}d}-s{seed:0{seed_width}d}")
            for number, prompt, seed in pairs]


def _check_job_lists(prompts, seeds) -> None:
    """Lists of prompts and of distinct seeds (a lone string would be taken letter by letter)."""
    from l2s.values import seed_value

    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise UsageError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if isinstance(seeds, int) or not seeds:
        raise UsageError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for seed in seeds:
        seed_value(seed, "seeds")
    if len(set(seeds)) != len(seeds):
        raise UsageError("a seed is repeated: each (prompt, seed) image is made once")


def batches(jobs: list[ImageJob], size: int) -> list[list[ImageJob]]:
    return [jobs[start:start + size] for start in range(0, len(jobs), size)]


def image_folders(out: Path) -> list[Path]:
    """An earlier multi-image run's ``pNN-sSSSS/`` folders in ``out``, sorted."""
    out = Path(out)
    return sorted(f for f in out.iterdir() if f.is_dir() and FOLDER_PATTERN.fullmatch(f.name)) if out.is_dir() else []


def overview_pages(out: Path) -> list[str]:
    """An earlier multi-image run's ``overview_NN.png`` pages in ``out``, sorted."""
    out = Path(out)
    return sorted(f.name for f in out.iterdir() if f.is_file() and OVERVIEW_PATTERN.fullmatch(f.name)) \
        if out.is_dir() else []


def earlier_outputs(out: Path, several: bool = False) -> list[str]:
    """What an earlier run left in ``out`` (names; ``several``: only a multi-image run's)."""
    out = Path(out)
    names = [name for name in (INDEX_FILE, *(() if several else IMAGE_OUTPUTS)) if (out / name).exists()]
    pages, folders = overview_pages(out), [f.name + "/" for f in image_folders(out)]
    names += pages[:1] + [f"... {len(pages)} overview pages"] if len(pages) > 1 else pages
    return names + (folders[:1] + [f"... {len(folders)} image folders"] if len(folders) > 1 else folders)


def remove_earlier_outputs(out: Path) -> None:
    """Everything :func:`earlier_outputs` names, and an earlier one-image run's map grids (one
    line says what went)."""
    out = Path(out)
    maps = [f"{MAPS_DIR}/{p.name}" for p in sorted((out / MAPS_DIR).glob("step_*.png"))]  # ours only: a user's stay
    folders = [f.name for f in image_folders(out)]
    # This run's outputs take their place: said as that, not as a loss of the user's files.
    remove_outputs(out, [INDEX_FILE, *IMAGE_OUTPUTS, *maps, *overview_pages(out), *folders],
                   "replacing the previous run's outputs", line="{why} in {folder} ({names})")
    try:
        (out / MAPS_DIR).rmdir()
    except OSError:                    # missing, or holding what the user put there
        pass


def refuse_earlier(out: Path, what: str) -> None:
    raise UsageError(f"{out} holds {what}; use another --out, or --restart to replace it")


@dataclass
class Resume:
    """What an earlier, interrupted run in the folder leaves this one."""

    entries: list[dict] | None   # its finished images (None: start over)
    seconds: float = 0.0         # the time its calls took
    why_not: str | None = None   # why it cannot be resumed, when there is one
    finished: bool = False       # it made every image already


def _other_jobs(earlier, wanted: list[list]) -> str:
    """How an earlier run's images differ from this one's, in a few words."""
    if not earlier or not isinstance(earlier, list) or not all(
            isinstance(j, list) and len(j) == 3 and isinstance(j[0], str) and isinstance(j[1], int) for j in earlier):
        return "other prompts or seeds (its index.json lists none it can name)"
    def described(jobs):
        prompts = list(dict.fromkeys(j[0] for j in jobs))
        seeds = sorted({j[1] for j in jobs}, key=str)
        return prompts, seeds
    (old_prompts, old_seeds), (new_prompts, new_seeds) = described(earlier), described(wanted)
    parts = []
    if old_prompts != new_prompts:
        first = old_prompts[0] if old_prompts else "none"
        parts.append(f"its {len(old_prompts)} prompt(s) begin with {first!r}")
    if old_seeds != new_seeds:
        shown = ", ".join(map(str, old_seeds[:6])) + (", ..." if len(old_seeds) > 6 else "")
        parts.append(f"its seeds are {shown}")
    return "other prompts or seeds (" + ("; ".join(parts) or "the same ones in another order or folders") + ")"


def resume_state(out: Path, settings: dict, jobs: list[ImageJob], unset_means: dict | None = None,
                 not_compared: frozenset = frozenset()) -> Resume:
    """The finished images of an interrupted run of the same images and settings. An earlier
    record's None (or no entry) for a key of ``unset_means`` stands for that value (its default);
    keys in ``not_compared`` (recorded by earlier versions, no effect on images) are ignored; a
    setting an earlier version spelled otherwise is the same (:func:`.settings.same_setting`)."""
    path = Path(out) / INDEX_FILE
    if not path.is_file():
        return Resume(None)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Resume(None, why_not="an index.json that cannot be read")
    if not isinstance(index, dict):
        return Resume(None, why_not="an index.json that is not a JSON object")
    wanted = [[job.prompt, job.seed, job.folder] for job in jobs]
    if index.get("jobs") != wanted:
        return Resume(None, why_not=_other_jobs(index.get("jobs"), wanted))
    defaults = unset_means or {}
    recorded = {**dict.fromkeys(defaults), **(index.get("settings") or {})}   # a key added since: unset
    earlier = {k: defaults.get(k) if v is None else v for k, v in recorded.items() if k not in not_compared}
    compared = unrecorded_digests(earlier, settings)
    changed = [f"{k}: {earlier.get(k)} -> {compared.get(k)}" for k in sorted(set(earlier) | set(compared))
               if not same_setting(k, earlier, compared)]
    if changed:
        return Resume(None, why_not="other settings (" + "; ".join(changed) + ")")
    entries = [e for e in index.get("images", []) if (Path(out) / e["folder"] / "report.json").is_file()]
    seconds = float((index.get("timings_s") or {}).get("command_total", 0.0))
    return Resume(entries, seconds, finished=len(entries) == len(jobs))


def open_image_run(out: Path, jobs: list[ImageJob], settings: dict, restart: bool, **compare) -> Resume:
    """The run folder's state for ``jobs`` made with ``settings``, checked before any model loads:
    an earlier run of other images or settings (or other outputs) is refused unless ``restart``
    (``compare``: see :func:`resume_state`)."""
    resume = Resume(None) if restart else resume_state(out, settings, jobs, **compare)
    if resume.finished:
        return resume
    if resume.why_not:
        refuse_earlier(Path(out), f"an earlier run with {resume.why_not}")
    earlier = [] if resume.entries is not None or restart else earlier_outputs(out)
    if earlier:
        refuse_earlier(Path(out), f"the outputs of an earlier run ({', '.join(earlier)})")
    return resume


def write_index(out: Path, source: str, batch_size: int, entries: list[dict], jobs: list[ImageJob],
                settings: dict, seconds: float) -> None:
    """Rewritten after every batch, so an interrupted run still lists what it finished (and resumes);
    ``seconds``: every call's time, a resumed run's earlier calls included."""
    order = {job.folder: i for i, job in enumerate(jobs)}
    index = {"model": source, "batch_size": batch_size, "complete": len(entries) == len(jobs),
             "images_planned": len(jobs), "images": sorted(entries, key=lambda e: order[e["folder"]]),
             "timings_s": {"command_total": seconds}, "settings": settings,
             "jobs": [[job.prompt, job.seed, job.folder] for job in jobs]}
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out) / INDEX_FILE, index)
