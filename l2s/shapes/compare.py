"""Steering against fine-tuning in one table, from ``l2s shapes bench --results`` JSON files.

The untuned bench gives two rows (base, steering); each bench of a tuned adapter
(``l2s shapes bench --lora RUN/adapter``) two more (tuned; tuned + steering), with the training
cost read from the GRPO run's ``log.jsonl`` (CPU seconds of every process, every epoch). The
break-even image count is the training cost over what steering adds per image (CPU seconds,
two-object part, steered minus base): below it, steering each image costs less than training.
A tuned model less accurate than steering (two-object colour) has none: "never".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from l2s.errors import UsageError
from l2s.files import read_jsonl_lines, read_state_json
from l2s.reward.identity import same_reward

from .recipes import shipped_rewards

TABLE_START = "| method | "   # the first line of every comparison table begins so
COLUMNS = ("two obj strict", "two obj colour", "two obj found", "two obj extra", "multi 3/2 colour",
           "multi 4/3 colour", "held-out colour",
           "no rel: found", "no rel: colours", "no rel: spread", "reward score", "reward AUC",
           "GRPO CPU-h", "extra CPU-s/img", "break-even images")


@dataclass
class Tuned:
    """A tuned row's sources: its bench results and (optionally) the GRPO run that made the adapter."""

    name: str
    bench: dict
    training_cpu_s: float | None
    run: str | Path | None = None    # the GRPO run folder whose cost the row carries


def read_bench(path: str | Path) -> dict:
    """A bench results JSON (written beside ``--results X.md``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        hint = f"; its JSON is {Path(path).with_suffix('.json')}" if Path(path).suffix == ".md" else ""
        raise UsageError(f"{path}: not a bench results JSON ({error}){hint}") from None
    if not isinstance(data, dict) or "parts" not in data:
        raise UsageError(f"{path}: not a bench results JSON (no 'parts'; write one with l2s shapes bench --results)")
    return data


def training_cpu_seconds(run: str | Path) -> float:
    """The summed ``cpu_s`` of a GRPO run's epochs (every process): GRPO only, not the reward
    model's pairs and training, which a SpatialScore run also paid for."""
    path = Path(run) / "log.jsonl"
    try:
        rows = [row for _, row in read_jsonl_lines(path, "run the GRPO command again to rewrite it")]
        done = json.loads((Path(run) / "grpo.json").read_text(encoding="utf-8"))["epochs_done"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{run}: cannot read the GRPO run's log.jsonl and grpo.json ({error})") from None
    epochs = [r for r in rows if r.get("epoch", 0) > 0]
    if not epochs or any("cpu_s" not in r for r in epochs):
        raise UsageError(f"{path}: no epochs with CPU seconds (runs before 'cpu_s' was logged cannot be costed)")
    if sorted(r["epoch"] for r in epochs) != list(range(1, done + 1)):
        raise UsageError(f"{path}: logs epochs {sorted(r['epoch'] for r in epochs)} but the run finished "
                         f"{done}: its cost would be wrong (an epoch's line was lost)")
    return float(sum(r["cpu_s"] for r in epochs))


# What two benches must share for their rows to compare like with like.
SHARED_SETTINGS = ("pipeline", "scale", "seeds", "position_prompts", "sampling", "step_size", "reward_model")


def check_comparable(untuned: dict, tuned: list[Tuned]) -> None:
    """Refuse benches of other prompts, seeds or sampling, an untuned bench that was tuned, and
    a tuned one that was not (one line each)."""
    base = untuned.get("settings") or {}
    if base.get("lora"):
        raise UsageError(f"--bench is a bench of a tuned model (--lora {base['lora']}); give the untuned one")
    position = next((p for p in untuned["parts"] if p.get("key") == "position"), None)
    if position is None:
        raise UsageError("--bench has no two-object part (key 'position'): nothing to compare")
    if "steered" not in (position.get("modes") or {}):
        raise UsageError("--bench has no steered images of the two-object part (benched with --modes base): the "
                         "steering row and the break-even need them; bench it with --modes base,steered")
    for t in tuned:
        settings = t.bench.get("settings") or {}
        if not settings.get("lora"):
            raise UsageError(f"--tuned {t.name}: its bench ran without --lora (not a tuned model)")
        differ = [k for k in SHARED_SETTINGS
                  if k not in ("pipeline", "reward_model") and settings.get(k) != base.get(k)]
        if not same_reward(base.get("reward_model"), settings.get("reward_model"), shipped_rewards()):
            differ.append("reward_model")
        if not _same_pipeline(settings, base):
            differ.insert(0, "pipeline")
        if not _same_classifier(settings, base):
            differ.append("steering classifier")
        if differ:
            raise UsageError(f"--tuned {t.name}: its bench differs from --bench in {', '.join(differ)}")
        _check_run_made_adapter(t, settings)


def _check_run_made_adapter(t: Tuned, settings: dict) -> None:
    """A GRPO run whose adapter is not the one the bench recorded, or that tuned another base model
    than the bench ran, would cost another row."""
    from l2s.grpo.lora import lora_digest

    if t.run is None:
        return
    if settings.get("lora_digest") and lora_digest(t.run) != settings["lora_digest"]:
        raise UsageError(f"--tuned {t.name}: the GRPO run {t.run} did not make the adapter its bench used "
                         f"(--lora {settings['lora']}): give the run that made it")
    tuned = _run_record(t.run).get("base_model")     # "weights DIGEST"; runs from before it: unchecked
    benched = settings.get("pipeline_digest")
    if tuned and benched and tuned != f"weights {benched}":
        raise UsageError(f"--tuned {t.name}: the GRPO run {t.run} tuned another base model ({tuned}) than its "
                         f"bench ran (weights {benched})")


def _run_record(run: str | Path) -> dict:
    record = read_state_json(Path(run) / "grpo.json", fix="give the run folder that 'l2s shapes grpo' wrote")
    return record if isinstance(record, dict) else {}


SHIPPED_CLASSIFIER_TAIL = ("l2s", "shapes", "assets", "classifier")


def _same_classifier(a: dict, b: dict) -> bool:
    """Whether two benches steered with one classifier: the same folder, the shipped one in two
    checkouts, or two folders whose weights are the same now."""
    from l2s.shapes.recipes import weights_fingerprints

    paths = [(s.get("classifiers") or {}).get("dual") for s in (a, b)]
    if None in paths or paths[0] == paths[1]:
        return True          # benches from before the classifiers were recorded: nothing to compare
    if all(Path(p).parts[-4:] == SHIPPED_CLASSIFIER_TAIL for p in paths):
        return True
    if not all(Path(p, "config.json").is_file() for p in paths):
        return False
    digests = [weights_fingerprints(classifier=p).get("classifier_digest") for p in paths]
    return digests[0] is not None and digests[0] == digests[1]


def _same_pipeline(a: dict, b: dict) -> bool:
    """Whether two benches ran one model: their recorded weights digests when both have one (a
    model retrained in place differs); else the same path, or for a copy at another path, the
    digests of both folders as they are now (older benches recorded none)."""
    from l2s.pipelines.loading import pipeline_digest

    if a.get("pipeline_digest") and b.get("pipeline_digest"):
        return a["pipeline_digest"] == b["pipeline_digest"]
    if a.get("pipeline") == b.get("pipeline"):
        return True
    digests = [s.get("pipeline_digest") or (pipeline_digest(s["pipeline"]) if s.get("pipeline") else None)
               for s in (a, b)]
    return None not in digests and digests[0] == digests[1]


def _part(bench: dict, key: str) -> dict:
    return next((p["modes"] for p in bench["parts"] if p["key"] == key), {})


def _cell(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(bench: dict, mode: str, steering: dict, training_cpu: float | None) -> list[str]:
    """One method's cells; ``steering``: the untuned model's steered two-object results."""
    position, plain = _part(bench, "position").get(mode, {}), bench.get("no_relation") or {}
    colour = [_part(bench, key).get(mode, {}).get("colour_accuracy") for key in ("multi_3_2", "multi_4_3", "ood")]
    with_steering = mode == "steered"
    extra_cpu = _extra_cpu(bench) if with_steering else 0.0
    cost = training_cpu / 3600 if training_cpu is not None else None
    return [_cell(position.get("accuracy")), _cell(position.get("colour_accuracy")),
            # "extra": images with more blobs of a colour than the prompt names (a bench before it: -)
            _cell(position.get("objects_found")), _cell(position.get("extra_objects")), *map(_cell, colour),
            # the no-relation part is unsteered: a steered row shows its model's values
            _cell(plain.get("objects_found")), _cell(plain.get("colours_found")), _cell(plain.get("position_spread")),
            _cell(position.get("reward_mean")), _cell(position.get("reward_auc")),
            _cell(cost, 2), _cell(extra_cpu, 2),
            _break_even(position, steering, training_cpu) if not with_steering else "-"]


def _break_even(tuned: dict, steering: dict, training_cpu: float | None) -> str:
    """Images after which training costs less than steering each one; "never" when the tuned
    model's two-object colour accuracy is below steering's (less cost buys less accuracy)."""
    extra, accuracy = steering.get("extra_cpu"), tuned.get("colour_accuracy")
    if training_cpu is None or not extra or extra <= 0:    # steering measured as free: no break-even
        return "-"
    reached = steering.get("colour_accuracy")
    if accuracy is not None and reached is not None and accuracy < reached:
        return "never"
    return _cell(training_cpu / extra, 0)


def _extra_cpu(bench: dict) -> float | None:
    modes = _part(bench, "position")
    base, steered = (modes.get(m, {}).get("generate_cpu_s_per_image") for m in ("base", "steered"))
    return steered - base if base is not None and steered is not None else None


def comparison_table(untuned: dict, tuned: list[Tuned]) -> str:
    """The Markdown table: base, steering, then each tuned model alone and with steering."""
    check_comparable(untuned, tuned)
    steering = {**_part(untuned, "position").get("steered", {}), "extra_cpu": _extra_cpu(untuned)}
    lines = [TABLE_START + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    rows = [("base", untuned, "base", None), ("steering", untuned, "steered", None)]
    for t in tuned:
        rows += [(t.name, t.bench, "base", t.training_cpu_s),
                 (f"{t.name} + steering", t.bench, "steered", t.training_cpu_s)]
    for name, bench, mode, training in rows:
        if mode in _part(bench, "position"):
            lines.append(f"| {name} | " + " | ".join(_row(bench, mode, steering, training)) + " |")
    return "\n".join(lines)
