"""The settings that made a run's images, which a rerun must match to resume them.

Two records, built two ways on purpose: ``l2s eval`` names its settings one by one (run.json's
``generation``: :func:`eval_settings`, completed by :func:`with_steerer_settings` once the model
loads), ``l2s generate`` keeps every option but those that change no image (index.json and
report.json: :func:`image_settings`). One builder would change what one of them writes, and the
runs earlier versions wrote would no longer resume.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from .settings import canonical_classifier, canonical_model, canonical_path

STEERER_SETTINGS = ("sampling", "step_size", "engine", "capture_backend")   # known once the model loads
# eval's settings recorded as given, after its model, classifier and prompts
_EVAL_AS_GIVEN = ("n_prompts", "prompt_seed", "steps", "height", "width", "guidance", "schedule", "dtype")


def eval_settings(options: Mapping[str, Any], digests: Mapping[str, Any], lora: str | Path | None = None) -> dict:
    """How ``l2s eval`` makes images, as far as its ``options`` (by name) say before a model loads;
    ``digests``: the fingerprints of the weights they name (:func:`l2s.models.weights_digests`);
    ``lora``: the adapter folder ``--lora`` names. A resumed run must match these exactly."""
    model = options["model"]
    settings = {"model": canonical_model(model), "classifier": canonical_classifier(options["classifier"], model),
                "prompts": canonical_path(options["prompts"]), **{k: options[k] for k in _EVAL_AS_GIVEN}}
    settings.update(digests)   # the same paths with retrained weights are other settings
    if options.get("relations"):   # recorded only when given, so runs made before the option still resume
        settings["relations"] = options["relations"]
    if options.get("execution") not in (None, "fast"):   # likewise: "fast" is what runs made before it used
        settings["execution"] = options["execution"]
    if lora is not None:
        settings["lora"] = str(Path(lora).resolve())
    return settings


def with_steerer_settings(settings: dict, steerer) -> dict:
    """``settings`` and what the loaded ``steerer`` runs: what runs the steps changes pixels too
    (kernels' rounding), so its effective sampling, step size, engine and capture backend."""
    used = (steerer.sampling_options(), steerer.step_size, getattr(steerer, "engine_kind", None),
            steerer.capture_backend_in_use)
    return {**settings, **dict(zip(STEERER_SETTINGS, used))}


def check_eval_resume(out: str | Path, settings: dict, seeds: Sequence[int], modes: Sequence[str],
                      n_prompts: int) -> dict:
    """Refuse resuming the eval run in ``out`` before any model loads (a damaged run.json, other
    settings, fewer images); ``settings`` as that run spelled them (:func:`spelled_as_recorded`)."""
    from .run_dir import refuse_changed_settings, refuse_fewer_images, refuse_scoring_outputs

    refuse_scoring_outputs(out)
    settings = spelled_as_recorded(out, settings)
    refuse_changed_settings(out, settings, not_yet=STEERER_SETTINGS)
    refuse_fewer_images(out, seeds, modes, n_prompts)
    return settings


def spelled_as_recorded(out: str | Path, settings: dict) -> dict:
    """``settings`` with the eval run in ``out``'s spelling of each setting that names the same thing
    (runs recorded before paths were made absolute, dtypes resolved, or a reference run's capture
    backend recorded as none, resume as they did)."""
    from l2s.errors import L2SError

    from .run_dir import read_run_file
    from .settings import spelled_as_before

    try:
        earlier = (read_run_file(out) or {}).get("generation")
    except L2SError:
        return settings      # a damaged run.json: refuse_changed_settings says so
    return spelled_as_before(earlier, settings) if isinstance(earlier, dict) else settings


def path_settings() -> dict:
    """Settings that name files, each with how it is resolved: recorded as absolute paths (``flux``,
    ``./flux/``, a symlink to it and, for ``--model``, a hub id in the local cache and its snapshot
    folder are one model); a resume compares them, runs recorded before as they were spelled, by
    :func:`l2s.evaluation.settings.same_setting`."""
    return {"model": canonical_model, "classifier": canonical_path, "lora": canonical_path}


def image_settings(options: Mapping[str, Any], not_image: Collection[str]) -> dict:
    """What makes ``l2s generate``'s images: its ``options`` (by name) but those in ``not_image``,
    as index.json keeps them: defaults resolved, so naming the default (``--device cpu`` on a CPU
    machine) is the same setting."""
    settings = {k: v if isinstance(v, (bool, int, float, type(None))) else str(v)
                for k, v in sorted(options.items()) if k not in not_image}
    settings.update({k: canonical(settings[k]) for k, canonical in path_settings().items() if k in settings})
    settings |= {k: options.get(k) or default for k, default in unset_defaults().items()}
    if settings["execution"] == "reference":   # its explicit attention computes the maps: no backend runs
        settings["capture_backend"] = None
    return settings


def unset_defaults() -> dict:
    """What an unset ``--device``, ``--capture-backend`` and ``--execution`` stand for on this machine."""
    from l2s.devices import default_device
    from l2s.steer.modes import DEFAULT_CAPTURE_BACKEND

    return {"device": default_device(), "capture_backend": DEFAULT_CAPTURE_BACKEND, "execution": "fast"}
