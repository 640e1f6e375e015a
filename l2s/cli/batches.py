"""``l2s generate`` with several prompts and seeds: which images, in which folders, in which batches.

One image per prompt and seed. One image keeps the single-image layout (image.png, report.json in
``--out``); more get a folder each, ``pNN-sSSSS`` (prompt number, seed), and ``index.json``.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from l2s.errors import UsageError
from l2s.files import atomic_write_json

FOLDER_PATTERN = re.compile(r"p\d+-s\d+")   # what a rerun may remove as an earlier run's image folder


@dataclass(frozen=True)
class ImageJob:
    prompt_number: int
    prompt: str
    seed: int
    folder: str   # below --out; "" for a single image (today's layout)


def read_prompt_file(path: str) -> list[str]:
    """``--prompts FILE``: one prompt a line, UTF-8, blank lines ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"--prompts {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise UsageError(f"--prompts {path}: cannot read it ({error.strerror or error})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompts_of(args: argparse.Namespace) -> list[str]:
    """The positional prompts, then those of ``--prompts FILE``."""
    prompts = list(args.prompt) + (read_prompt_file(args.prompts) if args.prompts else [])
    if not prompts:
        raise UsageError("no prompt: give PROMPT (one or more) or --prompts FILE"
                         + (f" ({args.prompts} has no non-blank line)" if args.prompts else ""))
    return prompts


def seeds_of(args: argparse.Namespace) -> list[int]:
    """``--seeds 0-3,10`` or ``--seed N`` (default 0); sets ``args.seed`` when only the default applies."""
    from l2s.evaluation import parse_seeds

    if args.seeds is None:
        if args.seed is None:
            args.seed = 0
        return [args.seed]
    if args.seed is not None:
        raise UsageError("give --seed N or --seeds LIST, not both")
    seeds = parse_seeds(args.seeds)
    args.seed = seeds[0]
    return seeds


def image_jobs(prompts: list[str], seeds: list[int]) -> list[ImageJob]:
    """Every prompt with every seed, prompt-major; folders named when there is more than one image."""
    pairs = [(number, prompt, seed) for number, prompt in enumerate(prompts) for seed in seeds]
    if len(pairs) == 1:
        return [ImageJob(0, prompts[0], seeds[0], "")]
    prompt_width = max(2, len(str(len(prompts) - 1)))
    seed_width = max(4, len(str(max(seeds))))
    return [ImageJob(number, prompt, seed, f"p{number:0{prompt_width}d}-s{seed:0{seed_width}d}")
            for number, prompt, seed in pairs]


def batches(jobs: list[ImageJob], size: int) -> list[list[ImageJob]]:
    return [jobs[start:start + size] for start in range(0, len(jobs), size)]


def remove_stale_image_folders(out: Path) -> None:
    """An earlier multi-image run's ``index.json`` and ``pNN-sSSSS/`` folders."""
    import shutil

    (Path(out) / "index.json").unlink(missing_ok=True)
    for folder in image_folders(out):
        shutil.rmtree(folder, ignore_errors=True)


def image_folders(out: Path) -> list[Path]:
    """An earlier multi-image run's ``pNN-sSSSS/`` folders in ``out``, sorted."""
    out = Path(out)
    return sorted(f for f in out.iterdir() if f.is_dir() and FOLDER_PATTERN.fullmatch(f.name)) if out.is_dir() else []


# Options that do not change an image: a rerun that differs only in them may resume.
NOT_IMAGE_SETTINGS = {"out", "quiet", "batch_size", "func", "prompt", "prompts", "seed", "seeds", "command",
                      "restart"}


def image_settings(args: argparse.Namespace) -> dict:
    """What makes the images (model, sampling, steering options), as index.json keeps it."""
    return {k: v if isinstance(v, (bool, int, float, type(None))) else str(v)
            for k, v in sorted(vars(args).items()) if k not in NOT_IMAGE_SETTINGS}


@dataclass
class Resume:
    """What an earlier, interrupted run in ``--out`` leaves this one."""

    entries: list[dict] | None   # its finished images (None: start over)
    seconds: float = 0.0         # the time its calls took
    why_not: str | None = None   # why it cannot be resumed, when there is one
    finished: bool = False       # it made every image already


def resume_state(out: Path, settings: dict, jobs: list[ImageJob]) -> Resume:
    """The finished images of an interrupted run of the same images and settings."""
    import json

    path = Path(out) / "index.json"
    if not path.is_file():
        return Resume(None)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Resume(None, why_not="an index.json that cannot be read")
    if not isinstance(index, dict):
        return Resume(None, why_not="an index.json that is not a JSON object")
    if index.get("jobs") != [[job.prompt, job.seed, job.folder] for job in jobs]:
        return Resume(None, why_not="other prompts or seeds")
    earlier = index.get("settings") or {}
    changed = [f"{k}: {earlier.get(k)} -> {settings.get(k)}" for k in sorted(set(earlier) | set(settings))
               if earlier.get(k) != settings.get(k)]
    if changed:
        return Resume(None, why_not="other settings (" + "; ".join(changed) + ")")
    entries = [e for e in index.get("images", []) if (Path(out) / e["folder"] / "report.json").is_file()]
    seconds = float((index.get("timings_s") or {}).get("command_total", 0.0))
    return Resume(entries, seconds, finished=len(entries) == len(jobs))


def write_index(out: Path, source: str, batch_size: int, entries: list[dict], jobs: list[ImageJob],
                settings: dict, seconds: float) -> None:
    """Rewritten after every batch, so an interrupted run still lists what it finished (and resumes);
    ``seconds``: every call's time, a resumed run's earlier calls included."""
    order = {job.folder: i for i, job in enumerate(jobs)}
    index = {"model": source, "batch_size": batch_size, "complete": len(entries) == len(jobs),
             "images_planned": len(jobs), "images": sorted(entries, key=lambda e: order[e["folder"]]),
             "timings_s": {"command_total": seconds}, "settings": settings,
             "jobs": [[job.prompt, job.seed, job.folder] for job in jobs]}
    atomic_write_json(Path(out) / "index.json", index)


def folders_line(out: Path, jobs: list[ImageJob], names: list[str]) -> str:
    """``l2s: wrote 4 image folders p00-s0000/ to p01-s0001/ (image.png, report.json) and index.json in OUT``."""
    span = f"{jobs[0].folder}/ to {jobs[-1].folder}/"
    return f"l2s: wrote {len(jobs)} image folders {span} ({', '.join(names)}) and index.json in {out}"
