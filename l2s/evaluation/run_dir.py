"""A run directory of :func:`l2s.evaluation.run_eval`: its layout, its settings check, clearing it.

A run directory::

    OUT/
      run.json                          the generation settings (a resumed run must match them) and,
                                        under "resolved", what they came to (the model's defaults);
                                        later parts' that differed, under "resolved_later"
      prompts.jsonl                     the prompts with their checks (PromptSpec.to_dict lines)
      base/00000/metadata.jsonl         GenEval's layout: one folder per prompt ...
      base/00000/samples/0000.png       ... one PNG per seed (the file name is the seed)
      base/00000/samples/0000.json      that image's detections, checks, verdict, timings
      steered/...                       the same prompts and seeds, steered
      results.jsonl                     every image's record
      summary.json                      per mode: accuracy, per relation / tag, seconds per image
      contact_sheet_01.png ...          images with their boxes; green border = pass, red = fail

The image folders follow GenEval's layout, so GenEval's own evaluator, or
:func:`l2s.evaluation.score_image_folder` on ``OUT/base``, can score them again with another
detector.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l2s.errors import L2SError
from l2s.files import (DamagedFileError, atomic_write_text, described_changes, read_state_json, remove_outputs,
                       unrecorded_digests)
from .image_runs import earlier_outputs
from .prompt_files import geneval_metadata
from .records import IMAGES, MODES, PROMPTS_FILE, RESULTS_FILE, RUN_FILE, SUMMARY_FILE, png_problem, write_json
from .specs import PromptSpec

log = logging.getLogger(__name__)


def prepare_run_dir(out: Path, specs: Sequence[PromptSpec], modes: list[str], settings: dict[str, Any],
                     restart: bool, seeds: Sequence[int], resolved: dict | None = None) -> None:
    """Everything of a run directory but its images (rank 0 of a spread run writes it alone);
    ``resolved``: what the images are made with, defaults filled in (recorded; a resume's that
    differ are warned of, never refused)."""
    refuse_generate_outputs(out)
    if restart:
        clear_run(out)
    refuse_scoring_outputs(out)
    claim_run_dir(out, settings, seeds, modes, len(specs), resolved)
    atomic_write_text(out / PROMPTS_FILE, "".join(json.dumps(spec.to_dict()) + "\n" for spec in specs))
    for mode in modes:
        for index, spec in enumerate(specs):
            folder = out / mode / f"{index:05d}"
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "metadata.jsonl", json.dumps(geneval_metadata(spec)) + "\n")


def refuse_generate_outputs(out: str | Path) -> None:
    """An eval run never goes into a folder of ``l2s generate`` images: ``--restart`` clears an
    eval run's files only, so the two would mix."""
    out = Path(out)
    one_image = ["image.png", "report.json"] if all((out / n).is_file() for n in ("image.png", "report.json")) else []
    made_by_generate = one_image + earlier_outputs(out, several=True)
    if made_by_generate:
        raise L2SError(f"{out} holds images of 'l2s generate' ({', '.join(made_by_generate)}); use another --out")


def refuse_scoring_outputs(out: str | Path) -> None:
    """A generating run never goes into the folder of an ``--images`` scoring run: its summary would
    replace the scoring run's."""
    out = Path(out)
    if not (out / RUN_FILE).exists() and any((out / IMAGES).glob("*/samples/*.json")):
        raise L2SError(f"{out} holds a scoring run of 'l2s eval --images' ({IMAGES}/): generating would replace its "
                       "summary; use another --out (or --restart to remove it)")


def run_outputs(out: Path) -> list[str]:
    """The names of what a run writes in ``out``, whether there or not; anything else there is a user's."""
    sheets = sorted(sheet.name for sheet in Path(out).glob("contact_sheet_*.png"))
    return [RUN_FILE, PROMPTS_FILE, RESULTS_FILE, SUMMARY_FILE, "report.html", *MODES, IMAGES, *sheets]


def clear_run(out: Path) -> None:
    """Remove what a run wrote in ``out`` (``--restart``); anything else there is kept."""
    remove_outputs(out, run_outputs(out), "starting the evaluation over")


def read_run_file(out: str | Path) -> dict | None:
    """The ``run.json`` of a run directory (None for a new one); a damaged or missing one beside
    images is an error saying how to recover (images whose settings are unknown are never reused)."""
    out = Path(out)
    fix = "rerun with --restart (restart=True) to start the run over, or use another --out"
    previous = read_state_json(out / RUN_FILE, fix=fix)
    if previous is not None and not isinstance(previous, dict):
        raise DamagedFileError(f"{out / RUN_FILE} is damaged (not a JSON object); {fix}")
    if previous is None and any((out / mode).is_dir() for mode in MODES):
        raise DamagedFileError(f"{out / RUN_FILE} is missing but {out} holds images; {fix}")
    return previous


def claim_run_dir(out: Path, settings: dict[str, Any], seeds: Sequence[int], modes: Sequence[str],
                  n_prompts: int, resolved: dict | None = None) -> None:
    """Record the generation settings, or check a resumed run used the same ones and asks for
    every prompt, seed and mode it holds images of (more grow it). ``resolved`` goes beside them:
    the settings as requested (None: the model's default) are what a resumed run must match; other
    resolved values are only warned of."""
    refuse_changed_settings(out, settings)
    refuse_fewer_images(out, seeds, modes, n_prompts)
    warn_changed_resolved(out, resolved)
    write_json(out / RUN_FILE, {"generation": settings, **resolved_record(out, resolved)})


def resolved_record(out: Path, resolved: dict | None) -> dict:
    """What run.json keeps of what the settings resolved to, every part of the run's: the first
    part's under "resolved" (what the earliest images were made with), then each later part's that
    differs from the part before (a mode added brings its schedule) under "resolved_later", in order,
    with how many image records the run held when it began (a run recorded before has neither)."""
    earlier = read_run_file(out) or {}
    first, later = earlier.get("resolved"), earlier.get("resolved_later")
    if not isinstance(first, dict):
        return {"resolved": resolved} if resolved else {}
    later = later if isinstance(later, list) else []
    parts = [first, *(part.get("resolved") for part in later if isinstance(part, dict))]
    last = [part for part in parts if isinstance(part, dict)][-1]
    if resolved and _compared(last) != _compared(json.loads(json.dumps(resolved))):   # any change: a record
        later = [*later, {"images_before": _image_records(out), "resolved": resolved}]
    return {"resolved": first, **({"resolved_later": later} if later else {})}


def _image_records(out: Path) -> int:
    return sum(1 for mode in MODES for _ in out.glob(f"{mode}/[0-9]*/samples/[0-9]*.json"))


def warn_changed_resolved(out: Path, resolved: dict | None) -> None:
    """One warning line when the same requested settings now resolve otherwise than the recorded
    ``resolved`` of the run's first part (a model's default changed between versions): images made
    now would differ from the run's. Only values both records hold are compared (a run recorded
    before has none)."""
    old = (read_run_file(out) or {}).get("resolved")
    if not isinstance(old, dict) or not resolved:
        return
    old, new, changed = _resolved_changes(old, resolved)
    if changed:
        log.warning("warning: the images in %s were made with other values than the same settings resolve to now "
                    "(%s): images made now would differ from them; --restart makes them all again", out,
                    described_changes(old, new, changed))


def _resolved_changes(old: dict, resolved: dict) -> tuple[dict, dict, list[str]]:
    """The entries of two ``resolved`` records that both hold, as compared, and the keys that differ."""
    old, new = _compared(old), _compared(json.loads(json.dumps(resolved)))   # as run.json holds it (lists)
    old, new = _shared(old, new), _shared(new, old)
    return old, new, sorted(k for k in old if old[k] != new[k])


def _compared(resolved: dict) -> dict:
    """``resolved`` less its schedule's description: prose, reworded between versions, makes no image differ."""
    schedule = resolved.get("schedule")
    if not isinstance(schedule, dict):
        return resolved
    return {**resolved, "schedule": {k: v for k, v in schedule.items() if k != "description"}}


def _shared(record: dict, other: dict) -> dict:
    """``record``'s entries ``other`` holds too, a mapping's by its keys in both (a steered mode
    added since brings a schedule; a newer version may record more sampling values)."""
    return {k: ({s: v for s, v in value.items() if s in other[k]}
                if isinstance(value, dict) and isinstance(other[k], dict) else value)
            for k, value in record.items() if k in other}


def refuse_fewer_images(out: str | Path, seeds: Sequence[int], modes: Sequence[str], n_prompts: int) -> None:
    """Refuse a request that leaves out a prompt, seed or mode the folder holds an image record of:
    its summary would replace the run's with that of a part of its images."""
    held_seeds, held_modes, held_prompts = held_images(Path(out))
    if held_prompts and held_prompts[-1] >= n_prompts:
        raise L2SError(f"{out} holds images of {held_prompts[-1] + 1} prompts; this request has {n_prompts}, and "
                       "its summary would cover only those: rerun with all of them (more grow the run), or use "
                       "another --out")
    if set(held_seeds) <= set(seeds) and set(held_modes) <= set(modes):
        return
    all_seeds = sorted({*held_seeds, *seeds})
    all_modes = [m for m in MODES if m in {*held_modes, *modes}]
    asked = " ".join(x for x in (not set(held_seeds) <= set(seeds) and f"--seeds {_seed_list(all_seeds)}",
                                 not set(held_modes) <= set(modes) and
                                 f"--mode {'both' if len(all_modes) > 1 else all_modes[0]}") if x)
    raise L2SError(f"{out} holds images of seed{'s' * (len(held_seeds) > 1)} {_seed_list(held_seeds)} in "
                   f"mode{'s' * (len(held_modes) > 1)} {' and '.join(held_modes)}; this request leaves some out, "
                   f"and its summary would cover only those: rerun with {asked} (more seeds grow the run), or "
                   "use another --out")


def held_images(out: Path) -> tuple[list[int], list[str], list[int]]:
    """The seeds, modes and prompt indices of the image records in ``out``
    (``MODE/PROMPT/samples/SEED.json``)."""
    seeds, modes, prompts = set(), set(), set()
    for mode in MODES:
        for record in out.glob(f"{mode}/[0-9]*/samples/[0-9]*.json"):
            seeds.add(int(record.stem))
            prompts.add(int(record.parent.parent.name))
            modes.add(mode)
    return sorted(seeds), [m for m in MODES if m in modes], sorted(prompts)


def _seed_list(seeds: Sequence[int]) -> str:
    seeds = sorted(seeds)
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


# Settings a resumed run may raise: more prompts of a generated set, whose first ones are the
# earlier run's (each image's record names its prompt, so one that differs is refused there).
GROWABLE = ("n_prompts",)


def refuse_changed_settings(out: str | Path, settings: dict[str, Any], not_yet: Sequence[str] = (),
                            fix: str = "use another --out, the same settings to resume it, or --restart "
                                       "(restart=True) to start it over") -> None:
    """Refuse resuming the run in ``out`` with other generation ``settings``; ``not_yet``: keys
    left out of the comparison (those a caller knows only later, e.g. once a model loads); ``fix``:
    the error's way out, in the caller's words."""
    previous = read_run_file(out)
    old = (previous or {}).get("generation") or {}
    if not isinstance(old, dict):
        raise DamagedFileError(f"{Path(out) / RUN_FILE} is damaged (its generation settings are not a JSON object); "
                               "rerun with --restart (restart=True) to start the run over, or use another --out")
    old = {k: v for k, v in old.items() if k not in not_yet}
    settings_shown = unrecorded_digests(old, settings)
    for key in GROWABLE:
        if _grows(old.get(key), settings_shown.get(key)):
            old[key] = settings_shown[key]
    if previous is None or old == settings_shown:
        return

    changed = sorted(k for k in set(old) | set(settings_shown) if (k in old, old.get(k)) !=
                     (k in settings_shown, settings_shown.get(k)))
    # Nested settings by their changed entries, long values by name: one readable line.
    raise L2SError(f"{out} holds a run made with other settings "
                   f"({described_changes(old, settings_shown, changed)}); {fix}")


def _grows(old: Any, new: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in (old, new)) and new > old


def trusted_png(png: Path) -> bool:
    """Whether a resumed image's PNG is there and decodes (a damaged one is logged)."""
    if not png.is_file():
        return False
    problem = png_problem(png)
    if problem:
        log.warning("%s is damaged (%s): making it again", png, problem)
    return problem is None
