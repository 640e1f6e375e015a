"""Two evaluation runs of the same prompts and seeds compared image for image (``l2s compare``).

Each image of one run is paired with the other run's image of the same prompt, seed and mode
(base, steered, or a scored folder's images); a prompt that a file repeats is paired occurrence
by occurrence; or one mode of each run with another (an ``--images`` run's images with a generated
run's steered ones). Per mode: each run's accuracy on the paired images, the difference, the pairs only
one run got right, and the exact two-sided sign test of that split (:func:`.stats.paired_comparison`).
A pair without a verdict on either side (a prompt no detector can judge) is skipped, and counted.
Runs scored by another rule or detector are refused: their verdicts do not compare. Beside an ``--images``
run, which generated nothing, only the settings both runs hold are differences; the other run's generation
settings are shown as context.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2s.errors import L2SError
from l2s.files import described_changes, read_jsonl_lines, read_state_json

from .records import IMAGES, MODES, RESULTS_FILE, SUMMARY_FILE
from .specs import CheckResult, indistinct_objects
from .settings import same_setting
from .stats import PairedComparison, paired_comparison

REPORT_START = "# l2s eval runs compared"   # the first line of every report
# What identifies how a run scored its images: runs that differ in one do not compare.
SCORING = ("rule", "detector")
# Settings that say which images a run holds, not how they were made (the pairing shows those).
_EXTENT = ("seeds", "modes", "n_prompts", "folders_without_position", "folders_without_images")

Key = tuple[str, str, int, int]   # (mode, prompt, occurrence of the prompt, seed)


@dataclass(frozen=True)
class EvalRun:
    """A finished ``l2s eval`` run: its folder, its summary's settings and each image's verdict
    (None: the image has none)."""

    folder: Path
    settings: dict[str, Any]
    correct: dict[Key, bool | None]

    def count(self, mode: str) -> int:
        return sum(key[0] == mode for key in self.correct)

    @property
    def modes(self) -> set[str]:
        """The modes it holds images of."""
        return {key[0] for key in self.correct}


def read_eval_run(folder: str | Path) -> EvalRun:
    """The run an ``l2s eval --out`` folder holds (its ``summary.json`` and ``results.jsonl``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise L2SError(f"{folder}: no such folder (give the --out folder of an 'l2s eval' run)")
    missing = [name for name in (SUMMARY_FILE, RESULTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise L2SError(f"{folder} holds no finished 'l2s eval' run (no {' or '.join(missing)}); finish it by "
                       "rerunning its command")
    fix = "rerun the run's 'l2s eval' command to write it again"
    summary = read_state_json(folder / SUMMARY_FILE, fix=fix)
    settings = summary.get("settings") if isinstance(summary, dict) else None
    if not isinstance(settings, dict):
        raise L2SError(f"{folder / SUMMARY_FILE} is damaged (no settings); {fix}")
    records = [row for _, row in read_jsonl_lines(folder / RESULTS_FILE, fix, torn_tail_ok=False)]
    return EvalRun(folder, settings, _verdicts(folder / RESULTS_FILE, records))


def _verdicts(path: Path, records: list[dict]) -> dict[Key, bool | None]:
    """Each record's verdict by its pairing key; a prompt's n-th folder is its occurrence n."""
    try:
        places = [(r["meta"]["mode"], r["prompt"], r["meta"].get("prompt_index", r["meta"].get("folder")),
                   int(r["meta"]["seed"]), _verdict(r)) for r in records]
    except (KeyError, TypeError, ValueError) as error:
        raise L2SError(f"{path}: not the records of an 'l2s eval' run ({type(error).__name__}: {error}); rerun "
                       "the run's command to write it again") from None
    folders: dict[tuple[str, str], set] = {}
    for mode, prompt, where, _, _ in places:
        folders.setdefault((mode, prompt), set()).add(where)
    order = {key: sorted(wheres) for key, wheres in folders.items()}
    return {(mode, prompt, order[mode, prompt].index(where), seed): correct
            for mode, prompt, where, seed, correct in places}


def _verdict(record: dict) -> bool | None:
    """A record's verdict, None where it has none; a record written before such images got none
    (``correct`` false) is known by its check that no image can show (:func:`.specs.indistinct_objects`)."""
    checks = [CheckResult(**check) for check in record.get("checks") or []]
    if record["correct"] is None or any(indistinct_objects(check) for check in checks):
        return None
    return bool(record["correct"])


@dataclass(frozen=True)
class ModeComparison:
    """One mode of two runs (``mode`` of A with ``b_mode`` of B, when another): the paired images'
    comparison, each run's image count and the pairs skipped for want of a verdict on either side."""

    mode: str
    paired: PairedComparison
    a_images: int
    b_images: int
    b_mode: str | None = None
    no_verdict: int = 0

    @property
    def shared(self) -> int:
        """Images both runs hold, with a verdict or not."""
        return self.paired.n_pairs + self.no_verdict

    @property
    def label(self) -> str:
        return self.mode if self.b_mode in (None, self.mode) else f"{self.mode}={self.b_mode}"


@dataclass(frozen=True)
class RunComparison:
    """Run ``a`` against run ``b``, mode by mode."""

    a: EvalRun
    b: EvalRun
    modes: list[ModeComparison]

    def differing_settings(self) -> str:
        """How the runs' images were made differently (``key: a -> b``), or ``none``; a setting two
        l2s versions spelled otherwise is the same (:func:`.settings.same_setting`). Beside a run that
        scored a folder (it generated nothing), only the settings both runs hold compare."""
        a, b = (_how_made(run.settings) for run in (self.a, self.b))
        held = set(a) & set(b) if _scored_a_folder(self.a) or _scored_a_folder(self.b) else set(a) | set(b)
        keys = sorted(k for k in held if not same_setting(k, a, b))
        return described_changes(a, b, keys) if keys else "none"

    def image_sources(self) -> list[str]:
        """Beside a run that scored a folder, where each run's images came from: that folder, or the
        other run's generation settings (context, not differences)."""
        runs = {"A": self.a, "B": self.b}
        if not any(map(_scored_a_folder, runs.values())):
            return []
        return [f"- {name} scored the images in {run.settings[IMAGES]}" if _scored_a_folder(run) else
                f"- {name} generated its images with: {_listed(_generation(run.settings))}"
                for name, run in runs.items()]

    def markdown(self) -> str:
        """The report: which runs, how they differ, and one table row per mode."""
        lines = [f"{REPORT_START}: A against B", "", f"- A: {self.a.folder}", f"- B: {self.b.folder}",
                 f"- settings that differ (A -> B): {self.differing_settings()}", *self.image_sources(), "",
                 "| mode | pairs | A accuracy | B accuracy | A - B | A only right | B only right | sign test p |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [_row(m) for m in self.modes]
        lines += ["", f"Pairs: the images both runs made from the same {self._paired_by()}; the "
                      "accuracies are on those. Sign test: exact two-sided binomial test of the pairs only one run got "
                      "right (McNemar's exact test)."]
        lines += [f"Skipped {m.label} pairs without a verdict on either side (prompts the detector can never "
                  f"judge): {m.no_verdict} of {m.shared}." for m in self.modes if m.no_verdict]
        lines += [f"Unpaired {m.label} images: A {m.a_images - m.shared} of {m.a_images}, "
                  f"B {m.b_images - m.shared} of {m.b_images}." for m in self.modes
                  if m.shared < max(m.a_images, m.b_images)]
        return "\n".join(lines) + "\n"

    def _paired_by(self) -> str:
        across = [f"A's {m.mode} with B's {m.b_mode}" for m in self.modes if m.label != m.mode]
        return f"prompt and seed ({', '.join(across)})" if across else "prompt, seed and mode"


def _how_made(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in _EXTENT}


def _scored_a_folder(run: EvalRun) -> bool:
    """An ``l2s eval --images`` run: it scored a folder's images and holds no generation setting."""
    return IMAGES in run.settings


def _generation(settings: dict) -> dict:
    return {k: v for k, v in _how_made(settings).items() if k not in SCORING}


def _listed(settings: dict) -> str:
    # None is an option left out: the run took its default, as described_changes says it.
    return ", ".join(f"{k}: {'unset' if v is None else repr(v)}" for k, v in sorted(settings.items())) or "none"


def _row(m: ModeComparison) -> str:
    c = m.paired
    a, b = c.a_correct / c.n_pairs, c.b_correct / c.n_pairs
    return (f"| {m.label} | {c.n_pairs} | {c.a_correct}/{c.n_pairs} = {a:.3f} | {c.b_correct}/{c.n_pairs} = {b:.3f} "
            f"| {a - b:+.3f} | {c.a_only} | {c.b_only} | {c.p_value:.3g} |")


def compare_runs(a: EvalRun, b: EvalRun, modes: tuple[str, str] | None = None) -> RunComparison:
    """``a`` against ``b`` in every mode both hold images of, or ``modes`` (A's, B's) paired with each
    other; refuses runs scored differently, a mode a run does not hold, or runs sharing no image."""
    _refuse_other_scoring(a, b)
    pairs = [(mode, mode) for mode in _modes(a, b) if a.count(mode) and b.count(mode)] if modes is None else \
        [_held_modes(a, b, modes)]
    compared = [_mode_comparison(a, b, a_mode, b_mode) for a_mode, b_mode in pairs]
    if not any(m.paired.n_pairs for m in compared):
        raise L2SError(_nothing_paired(a, b, modes, sum(m.no_verdict for m in compared)))
    return RunComparison(a, b, [m for m in compared if m.paired.n_pairs])


def _mode_comparison(a: EvalRun, b: EvalRun, a_mode: str, b_mode: str) -> ModeComparison:
    ours, theirs = _of(a, a_mode), _of(b, b_mode)
    unjudged = sum(ours[k] is None or theirs[k] is None for k in set(ours) & set(theirs))
    return ModeComparison(a_mode, paired_comparison(ours, theirs), a.count(a_mode), b.count(b_mode), b_mode,
                          unjudged)


def _refuse_other_scoring(a: EvalRun, b: EvalRun) -> None:
    differ = [k for k in SCORING if a.settings.get(k) != b.settings.get(k)]
    if differ:
        said = "; ".join(f"{k} {a.settings.get(k)!r} vs {b.settings.get(k)!r}" for k in differ)
        raise L2SError(f"{a.folder} and {b.folder} were scored differently ({said}): their verdicts do not compare; "
                       "score one run's images as the other's were (l2s eval --images FOLDER --detector D --rule R)")


def _held_modes(a: EvalRun, b: EvalRun, modes: tuple[str, str]) -> tuple[str, str]:
    """``modes`` (A's, B's), each one its run holds images of."""
    if a.count(modes[0]) and b.count(modes[1]):
        return modes
    raise L2SError(f"cannot pair A's {modes[0]!r} images with B's {modes[1]!r}: A ({a.folder}) holds the modes "
                   f"{_held(a)}, B ({b.folder}) {_held(b)}; name one of each (--modes A_MODE=B_MODE)")


def _nothing_paired(a: EvalRun, b: EvalRun, modes: tuple[str, str] | None, no_verdict: int = 0) -> str:
    """Why no image pairs: every shared image lacks a verdict, no mode in common (say how to pair one
    of each), or no prompt and seed."""
    if no_verdict:
        return (f"{a.folder} and {b.folder}: none of the {no_verdict} images they share has a verdict on both "
                "sides (prompts the detector can never judge): nothing to compare")
    shared = "the same prompt, seed and mode" if modes is None else \
        f"the same prompt and seed, {modes[0]} in A and {modes[1]} in B"
    line = f"{a.folder} and {b.folder} share no image ({shared}): nothing to pair; "
    if modes is None and not a.modes & b.modes:
        return line + (f"A holds the modes {_held(a)}, B {_held(b)}: pair one of each with --modes A_MODE=B_MODE "
                       "(e.g. --modes images=steered)")
    return line + "compare runs of the same --prompts and --seeds"


def _held(run: EvalRun) -> str:
    return ", ".join(_modes(run, run)) or "no"


def _modes(a: EvalRun, b: EvalRun) -> list[str]:
    held = a.modes | b.modes
    return [m for m in MODES if m in held] + sorted(held - set(MODES))


def _of(run: EvalRun, mode: str) -> dict[tuple[str, int, int], bool | None]:
    """``mode``'s verdicts by (prompt, occurrence, seed): what pairs with another run's images."""
    return {key[1:]: correct for key, correct in run.correct.items() if key[0] == mode}
