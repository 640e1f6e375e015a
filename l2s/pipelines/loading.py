"""From diffusers pipelines to steering pipelines: loading local folders and wrapping pipelines."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from l2s.classifier import RelationClassifier
from l2s.classifier.hub import cache_entry_note, looks_like_hub_id, not_cached
from l2s.errors import ModelLoadError, UsageError
from l2s.steer import DEFAULT_CAPTURE_BACKEND, Schedule

# Steering pipeline classes wrap_pipeline can pick, in the order it asks them (`accepts(pipe)`);
# each family module adds its class with @steering_family.
_FAMILIES: list = []


# Functions pipe -> dict | None: a kind of model's own wrap_pipeline defaults (family, steps, size,
# true_cfg_scale, step_size); registered by the module that defines the model's components.
_MODEL_DEFAULTS: list = []


def steering_family(cls):
    """Class decorator: lets :func:`wrap_pipeline` pick ``cls`` for the pipelines it accepts."""
    _FAMILIES.append(cls)
    return cls


def steering_defaults(provider):
    """Decorator: ``provider(pipe)`` gives the :func:`wrap_pipeline` options a kind of model samples
    with (or None for other models), used where the caller names none."""
    _MODEL_DEFAULTS.append(provider)
    return provider


def model_steering_defaults(pipe) -> dict:
    """The options the first provider that knows ``pipe`` gives (empty for a published model)."""
    for provider in _MODEL_DEFAULTS:
        found = provider(pipe)
        if found is not None:
            return dict(found)
    return {}


def wrap_pipeline(pipe, classifier: RelationClassifier, schedule: Schedule | None = None,
                  mode: str = "fast", step_size: float | None = None,
                  capture_backend: str = DEFAULT_CAPTURE_BACKEND, **flux_options):
    """Wrap an existing diffusers ``FluxPipeline`` or ``StableDiffusionPipeline``.

    ``mode`` picks the implementation (``l2s.steer.MODES``: "fast", the published "reference",
    "fast+compiled" ...); all steer alike. ``step_size`` replaces the published step size of the
    named schedules (default: published). ``capture_backend`` is how the fast modes compute maps
    ("sdpa" or "native"). ``flux_options`` go to :class:`FluxSteeringPipeline`: ``family``
    ("flux-dev" or "flux-schnell": whose published schedule rule and steps apply), ``steps``,
    ``size``, ``engine`` (``l2s.engines.ENGINE_KINDS``), ``true_cfg_scale``, ``negative_prompt``,
    ``max_sequence_length``. A model that names its own defaults (the shapes world's, see
    :func:`steering_defaults`) gets them for every option not given.
    """
    defaults = model_steering_defaults(pipe)
    own_step_size = defaults.pop("step_size", None)
    step_size = own_step_size if step_size is None else step_size
    flux_options = {**defaults, **flux_options}
    for family in _FAMILIES:
        if family.accepts(pipe):
            return family.wrap(pipe, classifier, schedule, mode, step_size, capture_backend, **flux_options)
    raise TypeError(f"cannot steer a {type(pipe).__name__}: expected a FLUX or Stable Diffusion pipeline")


# Component modules that moved, named in the refusal of a folder saved before (the fix is one edit).
_MOVED_MODULES = {"l2s.shapes_model": "l2s.shapes.model"}


def _import_l2s_components(model_index: dict, path: Path) -> None:
    """Import the l2s modules a pipeline folder names (the shapes world's pixel VAE, ...):
    diffusers finds custom component classes only in modules that are already imported."""
    for value in model_index.values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("l2s."):
            name = value[0]
            try:
                importlib.import_module(name)
            except ImportError as error:
                moved = _MOVED_MODULES.get(name)
                hint = f" (saved before the module moved: write {moved!r} in its model_index.json)" if moved else ""
                raise ModelLoadError(f"{path} needs {name}, which cannot be imported: {error}{hint}") from None


def _read_model_index(path: Path) -> tuple[dict, str]:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"no diffusers pipeline at {path} (model_index.json missing){cache_entry_note(path)}")
    try:
        model_index = json.loads(index.read_text())
        return model_index, model_index["_class_name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"corrupt model_index.json in {path}: {e}") from None


def _check_components(path: Path, model_index: dict, given: dict) -> None:
    """Every component ``model_index.json`` names has its folder (those in ``given`` are passed in
    instead): without one, diffusers names the pipeline folder in its error, and transformers may
    even build a tokenizer of no vocabulary from it and steer on unknown tokens."""
    missing = [name for name, value in model_index.items()
               if not name.startswith("_") and name not in given and isinstance(value, list)
               and len(value) == 2 and all(value) and not (path / name).is_dir()]
    if missing:
        raise ModelLoadError(f"the pipeline at {path} lacks the folder{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)} that its model_index.json names: copy or download the "
                             "whole pipeline again")


def folder_family(folder: str | Path) -> str | None:
    """"sd" or "flux" from a pipeline folder's model_index.json (None when it does not say)."""
    try:
        _, name = _read_model_index(Path(folder))
    except ModelLoadError:
        return None
    name = name if isinstance(name, str) else ""
    return "sd" if "StableDiffusion" in name else "flux" if "Flux" in name else None


def size_multiple(folder: str | Path) -> int | None:
    """What image sides must be a multiple of for the pipeline in ``folder`` (its VAE's scale
    factor, x2 for FLUX's 2x2 latent packing), read from its configs before it loads; None when
    they do not say."""
    family = folder_family(folder)
    try:
        channels = json.loads((Path(folder) / "vae" / "config.json").read_text())["block_out_channels"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if family is None or not isinstance(channels, list) or not channels:
        return None
    factor = 2 ** (len(channels) - 1)          # diffusers' vae_scale_factor
    return factor * 2 if family == "flux" else factor


def guidance_embedded(folder: str | Path | None) -> bool:
    """Whether a FLUX pipeline folder's transformer has a guidance embedding (the tiny demo model,
    ``folder`` None, has none); an unreadable config says yes, and loading says what is wrong."""
    if folder is None:
        return False
    try:
        return bool(json.loads((Path(folder) / "transformer" / "config.json").read_text())["guidance_embeds"])
    except (OSError, ValueError, KeyError, TypeError):
        return True


def pipeline_folder(name_or_path: str | Path) -> Path:
    """A pipeline's local folder: ``name_or_path`` itself, or a hub id's snapshot in the local
    Hugging Face cache (``HF_HOME``). Never downloads: base models weigh many GB."""
    path = Path(name_or_path)
    if path.exists() or not looks_like_hub_id(str(name_or_path)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError) or not a valid id
        raise ModelLoadError(not_cached(str(name_or_path), "model")) from None


def pipeline_digest(folder: str | Path) -> str | None:
    """A pipeline folder's weights fingerprint (:func:`l2s.files.weights_digest`): model_index.json
    and the component folders it names, not whatever else sits beside them (the shapes world's
    classifiers). None when the folder does not exist."""
    import hashlib

    from l2s.files import weights_digest

    folder = Path(folder)
    try:
        names = sorted(k for k in json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
                       if (folder / k).is_dir())
    except (OSError, ValueError, TypeError):   # not a pipeline index loading would accept: the folder as it is
        return weights_digest(folder)
    parts = [f"model_index.json={weights_digest(folder / 'model_index.json')}"]
    parts += [f"{name}={weights_digest(folder / name)}" for name in names]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def check_torch_dtype(torch_dtype) -> None:
    """``torch_dtype`` is None or a ``torch.dtype`` (a name such as "bf16" is the CLI's spelling)."""
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise UsageError(f"torch_dtype must be a torch.dtype (torch.bfloat16, torch.float16, torch.float32), "
                         f"got {torch_dtype!r}")


def load_diffusers_pipeline(path: str | Path, torch_dtype: torch.dtype | None = None):
    """Load a FLUX or SD pipeline from a local diffusers directory, or a hub id in the local
    cache (:func:`pipeline_folder`); never contacts a hub."""
    import diffusers

    check_torch_dtype(torch_dtype)
    path = pipeline_folder(path)
    model_index, class_name = _read_model_index(path)
    _import_l2s_components(model_index, path)
    kinds = {"FluxPipeline": diffusers.FluxPipeline,
             "StableDiffusionPipeline": diffusers.StableDiffusionPipeline}
    if class_name not in kinds:
        raise ModelLoadError(f"{path} holds a {class_name}; l2s steers {', '.join(kinds)}")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if class_name == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    _check_components(path, model_index, kwargs)
    try:
        return kinds[class_name].from_pretrained(str(path), **kwargs)
    except Exception as e:  # diffusers raises many kinds on damaged folders
        raise ModelLoadError(f"could not load the pipeline at {path}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None


def save_pipeline(pipe, path: str | Path) -> Path:
    """Write ``pipe`` as a diffusers model folder (safetensors weights, tokenizers included) that
    :func:`load_diffusers_pipeline` reloads offline."""
    from l2s.files import follow_umask

    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    follow_umask(path)   # diffusers' safetensors files are 0600 otherwise
    return path
