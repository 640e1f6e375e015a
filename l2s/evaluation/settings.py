"""Run settings as l2s versions spelled them: one setting recorded otherwise by an earlier version (a
relative path, a hub id for its local snapshot, an unresolved dtype, a reference run's capture backend)
is the same setting, for a resumed run (``l2s eval``, ``l2s generate``, ``l2s make-data``) and for
``l2s compare``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

# A dtype recorded before dtypes were resolved: it says nothing about the one that loaded.
UNRESOLVED_DTYPES = (None, "auto")


def canonical_path(value: str | None) -> str | None:
    """A local path as its absolute path, symlinks resolved (``./clf/`` and ``clf`` are one
    setting); names (``tiny``, a hub id, a shipped classifier's name) and what is no text (a damaged
    record's) as given."""
    return str(Path(value).resolve()) if isinstance(value, str) and Path(value).exists() else value


def canonical_model(value: str | None) -> str | None:
    """``--model`` as :func:`canonical_path` gives it, and a hub id found in the local Hugging Face
    cache as its snapshot folder (what loads: the id and that folder are one model); a hub id not
    in the cache as given (loading says so)."""
    from l2s.classifier.hub import looks_like_hub_id
    from l2s.errors import L2SError

    if not isinstance(value, str) or Path(value).exists() or not looks_like_hub_id(value):
        return canonical_path(value)
    from l2s.pipelines.loading import pipeline_folder

    try:
        return canonical_path(str(pipeline_folder(value)))    # the cache only: nothing is downloaded
    except L2SError:
        return value


def canonical_classifier(value: str | None, model: str | None) -> str | None:
    """The shipped model's default classifier by its name: ``--classifier shapes`` is the default."""
    return canonical_path("shapes" if value is None and model is None else value)


# Each setting that versions spelled otherwise, as one spelling, given the run's settings.
_SPELLED = {"model": lambda value, _: canonical_model(value),
            "prompts": lambda value, _: canonical_path(value),
            "lora": lambda value, _: canonical_path(value),
            "classifier": lambda value, run: canonical_classifier(value, run.get("model")),
            # a reference run's explicit attention computes the maps: the backend recorded before ran nowhere
            "capture_backend": lambda value, run: None if run.get("execution") == "reference" else value}


def same_setting(key: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' recorded settings ``a`` and ``b`` hold one ``key`` (absent: unset), however
    each version spelled it."""
    if a.get(key) == b.get(key):
        return True
    if key == "dtype":
        return a.get(key) in UNRESOLVED_DTYPES or b.get(key) in UNRESOLVED_DTYPES
    spelled = _SPELLED.get(key)
    return spelled is not None and spelled(a.get(key), a) == spelled(b.get(key), b)


def spelled_as_before(earlier: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``earlier``'s spelling of each setting they share that names the same thing
    (a resume compares settings exactly: runs recorded by an earlier version resume as they did)."""
    same = {k: earlier[k] for k in settings if k in earlier and same_setting(k, earlier, settings)}
    return {**settings, **same}
