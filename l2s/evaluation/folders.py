"""Score a GenEval-layout image folder that something else generated (``l2s eval --images``)."""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from l2s.errors import L2SError
from l2s.files import file_sha256
from l2s.distributed import output_lock, world
from .detectors import Detector
from .geometry import GENEVAL
from .prompt_files import spec_from_metadata
from .records import (IMAGES, MODES, RUN_FILE, SUMMARY_FILE, ImageRecord, detect_and_score, open_rgb, png_problem,
                      read_json, write_json)
from .reports import EvalReport, ModeReport, write_outputs
from .run_dir import clear_run
from .runs import check_scorable
from .specs import PromptSpec, result_from_record
from .stats import summarise

log = logging.getLogger(__name__)
_DIGITS = re.compile(r"^\d+$")
_SAMPLE = re.compile(r"^\d+\.png$")  # GenEval scores only these files


@dataclass(frozen=True)
class ImageFolder:
    """A GenEval-layout folder as read before scoring: (prompt folder, spec, PNG) of every
    position-prompt sample, the number of folders without a position clause, and the names of the
    position-prompt folders without any ``samples/<n>.png``."""
    path: Path
    jobs: list[tuple[Path, PromptSpec, Path]]
    without_position: int
    without_images: tuple[str, ...]

    def check_scorable(self, rule: str, detector: Detector | None = None) -> None:
        """Refuse a prompt ``rule`` (or ``detector``, when given) cannot score, named by its folder."""
        prompts = {folder: spec for folder, spec, _ in self.jobs}   # named by folder: jobs count images
        check_scorable(list(prompts.values()), rule, detector, names=[str(f / "metadata.jsonl") for f in prompts])


def read_image_folder(images_dir: str | Path) -> ImageFolder:
    """Read a GenEval-layout folder (its prompts and the names of its images, not the images); a
    folder not in that layout, or without any position-prompt image, is refused."""
    images_dir = Path(images_dir)
    jobs, skipped, without_images = _folder_jobs(images_dir)
    if without_images and world().is_main:   # GenEval scores samples/<n>.png only: say so, not shrink the count
        shown = ", ".join(without_images[:5]) + (" ..." if len(without_images) > 5 else "")
        one = len(without_images) == 1
        log.warning("warning: %d position-prompt folder%s no samples/<n>.png and %s not scored (listed in "
                    "summary.json): %s", len(without_images), " has" if one else "s have", "is" if one else "are",
                    shown)
    return ImageFolder(images_dir, jobs, skipped, tuple(without_images))


def score_image_folder(images_dir: str | Path | ImageFolder, detector: Detector, out_dir: str | Path, *,
                       rule: str = GENEVAL, detector_name: str = "custom", contact_sheets: bool = True,
                       progress: bool = True, restart: bool = False) -> EvalReport:
    """Score a GenEval-layout folder (``<digits>/metadata.jsonl`` + ``<digits>/samples/<digits>.png``),
    given by its path or as :func:`read_image_folder` read it (checked before a detector loads).

    Folders whose metadata has no position clause (GenEval's other tasks) are skipped and counted,
    and position-prompt folders without images listed, in the summary's settings. Per-image
    records go to ``OUT/images/<folder>/samples/<n>.json`` (a rerun skips the images it scored
    with the same rule and detector), plus ``results.jsonl``, ``summary.json`` and contact sheets in OUT
    (locked while this runs; ``restart``: remove previous records first).
    """
    folder = images_dir if isinstance(images_dir, ImageFolder) else read_image_folder(images_dir)
    out = Path(out_dir)
    folder.check_scorable(rule, detector)
    with output_lock(out, kind="eval"):
        check_scoring_folder(folder.path, out, restart)
        if restart:
            world().on_main(lambda: clear_run(out))
        return _score_folder_jobs(folder, out, detector, rule, detector_name, contact_sheets, progress)


def check_scoring_folder(images_dir: str | Path, out: str | Path, restart: bool = False) -> None:
    """Refuse an ``out`` whose run scoring would replace (an ``l2s eval`` run that generated its
    images: its summary and report), or whose restart would remove the images to score."""
    images_dir, out = Path(images_dir), Path(out)
    if (out / RUN_FILE).exists():
        raise L2SError(f"{out} holds an 'l2s eval' run that generated its images ({RUN_FILE}): scoring "
                       "would replace its summary; score the images into another output folder")
    scored = _scored_folder(out)
    if scored is not None and not restart and scored != str(images_dir.resolve()):
        raise L2SError(f"{out} holds the scores of {scored}; this command scores {images_dir.resolve()}, and its "
                       "summary would replace them: use another --out, or --restart to score into it anew")
    owned = [out / name for name in (*MODES, IMAGES)]    # what a restart removes
    if restart and any(images_dir.resolve().is_relative_to(path.resolve()) for path in owned):
        raise L2SError(f"restarting {out} would remove {images_dir}, the images to score; score them into "
                       "another output folder")


def _scored_folder(out: Path) -> str | None:
    """The image folder whose scores ``out`` holds (as its summary names it), None when unknown."""
    try:
        settings = json.loads((out / SUMMARY_FILE).read_text()).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return settings.get("images") if isinstance(settings.get("images"), str) else None


def _score_folder_jobs(images: ImageFolder, out: Path, detector: Detector, rule: str, detector_name: str,
                       contact_sheets: bool, progress: bool) -> EvalReport:
    scoring = {"rule": rule, "detector": detector_name}
    started = time.perf_counter()
    group = world()  # spread over processes: each scores every N-th image, rank 0 writes the report
    mine = group.share(list(enumerate(images.jobs)))
    scored = [(position, _score_sample(folder, spec, png, out, detector, rule, scoring))
              for position, (folder, spec, png) in tqdm(mine, desc=group.bar_label("l2s eval"), unit="img",
                                                       disable=not (progress and group.is_main))]
    records = [record for _, record in sorted((item for share in group.gather(scored) for item in share),
                                              key=lambda item: item[0])]
    report = EvalReport(modes={IMAGES: ModeReport(summarise([r.result for r in records], rule), records)},
                        settings={"images": str(images.path.resolve()),
                                  "folders_without_position": images.without_position,
                                  "folders_without_images": list(images.without_images), **scoring},
                        wall_time_s=time.perf_counter() - started)
    if group.is_main:
        write_outputs(out, report, contact_sheets)
    return report


def _folder_jobs(images_dir: Path) -> tuple[list[tuple[Path, PromptSpec, Path]], int, list[str]]:
    """(prompt folder, spec, PNG) of every position-prompt sample, the number of folders without a
    position clause and the position-prompt folders without images."""
    if not images_dir.is_dir():
        what = "is a file, not a folder of GenEval image folders" if images_dir.exists() else "no such folder"
        raise L2SError(f"--images {images_dir}: {what}")
    folders = sorted(p for p in images_dir.iterdir() if p.is_dir() and _DIGITS.match(p.name)
                     and (p / "metadata.jsonl").is_file())
    if not folders:
        raise L2SError(f"no GenEval image folders (<digits>/metadata.jsonl) in {images_dir}{_layout_hint(images_dir)}")
    jobs: list[tuple[Path, PromptSpec, Path]] = []
    skipped, without_images = 0, []
    for folder in folders:
        spec = _folder_spec(folder / "metadata.jsonl")
        if spec is None:
            skipped += 1
            continue
        samples = sorted((p for p in (folder / "samples").glob("*.png") if _SAMPLE.match(p.name)),
                         key=lambda p: int(p.stem))
        jobs += [(folder, spec, png) for png in samples]
        if not samples:
            without_images.append(folder.name)
    if not jobs:
        raise L2SError(f"no position-prompt images in {images_dir} ({skipped} folders without a position clause)")
    return jobs, skipped, without_images


def _layout_hint(images_dir: Path) -> str:
    """What the folder is instead, when that is plain: the way to the folder meant, or the layout."""
    prompt = next((d for d in (images_dir, images_dir.parent) if (d / "metadata.jsonl").is_file()), None)
    if prompt is not None:     # the folder itself or its samples/
        return f": that is one prompt's images ({prompt.name}); pass the folder of all prompts, {prompt.parent}"
    modes = [str(images_dir / mode) for mode in MODES if (images_dir / mode).is_dir()]
    if modes:
        return f": it holds an 'l2s eval' run; pass its image folder, {' or '.join(modes)}"
    flat = [p for p in images_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    if flat:
        return (f": it holds {len(flat)} loose image{'s' * (len(flat) > 1)} and no prompts; put each prompt's images "
                "in <n>/samples/<seed>.png beside <n>/metadata.jsonl, its prompt as a GenEval metadata line")
    return ""


def _folder_spec(path: Path) -> PromptSpec | None:
    """A prompt folder's spec (None: no position clause). GenEval reads the file as one JSON object
    (json.load: a pretty-printed one too); a file of several lines is read by its first."""
    try:
        text = path.read_text(encoding="utf-8-sig").strip()   # a byte-order mark is no JSON
        if not text:
            raise ValueError("the file is empty")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = json.loads(text.splitlines()[0])
        return spec_from_metadata(data)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise L2SError(f"{path}: not a GenEval metadata or PromptSpec line ({error})") from None


def _score_sample(folder: Path, spec: PromptSpec, png: Path, out: Path, detector: Detector, rule: str,
                  scoring: dict[str, str]) -> ImageRecord:
    """One image of a folder: resumed from its record, or scored (again, when its rule or detector
    changed or another image took its place: the folder is not ours, so its files may change)."""
    record_path = out / IMAGES / folder.name / "samples" / f"{png.stem}.json"
    previous = read_json(record_path)
    digest = _image_digest(png)
    same_image = _same_image(previous, png, digest)
    if same_image and previous.get("scoring") == scoring:
        return ImageRecord(result_from_record(previous), png, previous["meta"], "resumed")
    problem = png_problem(png)
    if problem:
        raise L2SError(f"cannot read the image {png} ({problem})")
    image = open_rgb(png)
    result, score_s = detect_and_score(detector, image, spec, rule, f"{folder.name}/{png.stem}")
    meta = {"mode": IMAGES, "folder": folder.name, "seed": int(png.stem), "image": str(png.resolve()),
            "image_sha256": digest, "score_s": score_s}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(record_path, {**result.to_dict(), "meta": meta, "scoring": scoring})
    return ImageRecord(result, png, meta, "rescored" if same_image else "scored")


def _image_digest(png: Path) -> str:
    try:
        return file_sha256(png)
    except OSError as error:    # a folder named <n>.png, a file that cannot be read: one line, as undecodable ones
        raise L2SError(f"cannot read the image {png} ({type(error).__name__}: {error.strerror or error})") from None


def _same_image(previous: dict | None, png: Path, digest: str) -> bool:
    """Whether ``previous`` is the record of the image now at ``png``: its path and SHA-256. A record
    from before the SHA-256 was kept resumes on its path, as it did (else a rerun scores all again)."""
    if previous is None or previous["meta"].get("image") != str(png.resolve()):
        return False
    recorded = previous["meta"].get("image_sha256")
    return recorded == digest if recorded is not None else png_problem(png) is None
