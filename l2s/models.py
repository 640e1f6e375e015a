"""Which model steers, by name: the shipped shapes-world model (the default), a random tiny demo
pipeline (:data:`TINY_MODELS`), or a diffusers folder or hub id in the local cache with its
classifier and LoRA adapter; what ``l2s generate`` and ``l2s eval`` load (:func:`load_steerer`) and
``l2s make-data`` inverts (:func:`load_pipeline`), and the fingerprints of those weights a run records
(:func:`weights_digests`), for every model alike.

Above :mod:`l2s.shapes` and :mod:`l2s.demo`, which it picks from; nothing heavy loads on import.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from l2s.distributed import EVERY_PROCESS

log = logging.getLogger(__name__)

# Names of the random tiny pipelines, built in code (offline): name -> (family, guidance embedding).
TINY_MODELS = {"tiny": ("flux", False), "tiny-flux": ("flux", False), "tiny-dev": ("flux", True),
               "tiny-sd": ("sd", False)}


def tiny_pipeline(name: str):
    """The random tiny pipeline of :data:`TINY_MODELS` ``name`` (seed 0)."""
    import l2s.demo as demo

    family, guidance = TINY_MODELS[name]
    if family == "sd":
        return demo.tiny_sd_pipeline(seed=0)
    return demo.tiny_flux_pipeline(seed=0, guidance_embeds=guidance)


def check_built_in_dtype(model: str | Path | None, dtype, spelled: Callable[[str], str] = str) -> None:
    """The shipped model (``model`` None) and the tiny ones are built in fp32: another ``dtype`` is
    refused (``UsageError``), not ignored; the message names arguments as ``spelled`` writes them."""
    import torch

    from l2s.devices import weights_dtype
    from l2s.errors import UsageError

    # By the dtype it names ("auto" is fp32 on the CPU): an unknown name is said as such, not as another dtype.
    if (model is None or str(model) in TINY_MODELS) and weights_dtype(dtype, "cpu") is not torch.float32:
        which = "the shipped shapes model" if model is None else \
            "the tiny demo model" if model == "tiny" else f"the tiny demo model {str(model)!r}"
        raise UsageError(f"{spelled('dtype')} {dtype}: {which} runs in fp32 only ({spelled('dtype')} applies to "
                         f"{spelled('model')} PATH)")


def model_folder(model: str | Path | None) -> Path | None:
    """The local pipeline folder ``model`` names (the shipped one for None), before loading; None for
    the tiny models built in code, a missing shipped model and hub ids not in the local cache."""
    from l2s.errors import L2SError
    from l2s.pipelines.loading import pipeline_folder
    from l2s.shapes.recipes import shipped_assets

    if model is None:
        return shipped_assets().pipeline if shipped_assets().available else None
    if model in TINY_MODELS:      # built in code; any other name is a folder or hub id
        return None
    try:
        folder = pipeline_folder(model)
    except L2SError:
        return None                    # loading says why, in its own words
    return folder if Path(folder).is_dir() else None


def weights_digests(model: str | Path | None, classifier=None, lora: str | Path | None = None) -> dict:
    """Fingerprints of the local weights behind ``model``, ``classifier`` and ``lora`` as
    :func:`load_steerer` takes them (shipped names resolved; a hub id model by its local snapshot, a
    hub id classifier not at all), for a run's settings: a retrained classifier or adapter saved at
    the same path must not resume an earlier run's images. The random tiny model has none; standing
    in for a missing shipped model, it is recorded as such, so its images never resume as the shipped
    model's (nor the reverse)."""
    from l2s.shapes import shipped_assets
    from l2s.shapes.recipes import weights_fingerprints

    if model is None and not shipped_assets().available:
        return {"model_stand_in": "tiny"}
    classifier = classifier if classifier is not None or model is not None else shipped_assets().classifier
    return weights_fingerprints(model_folder(model), classifier, lora)


def lora_folder(lora: str | Path | None) -> Path | None:
    """The adapter folder a ``lora`` value names (the shipped adapter by its name); None for None."""
    from l2s.shapes.recipes import lora_folder as named_lora_folder

    return named_lora_folder(lora)


def load_pipeline(model: str | Path, device: str | None = None, dtype="auto"):
    """A diffusers pipeline on ``device`` (default: CUDA when usable): a tiny one by its name, else
    a local folder or hub id in the local cache, in ``dtype`` (a torch dtype, or "auto", "fp32",
    "bf16", "fp16": "auto" is the model's published dtype on a GPU, fp32 on the CPU)."""
    from l2s.devices import default_device

    check_built_in_dtype(model, dtype)
    device = device or default_device()
    if str(model) in TINY_MODELS:
        return tiny_pipeline(str(model)).to(device)
    return _folder_pipeline(model, device, dtype).to(device)


def load_steerer(model: str | Path | None = None, classifier=None, lora: str | Path | None = None, *,
                 device: str | None = None, dtype="auto", true_cfg_scale: float | None = None,
                 step_size: float | None = None, spelled: Callable[[str], str] = str):
    """(steering pipeline, one line saying what loaded).

    ``model``: None for the shipped shapes-world model (the tiny random FLUX, with a warning, where
    it is missing), a name of :data:`TINY_MODELS`, or a diffusers folder / hub id in the local
    cache, which needs ``classifier``. ``classifier``: a folder, hub id, published ``.pth`` or a
    shipped classifier's name ("shapes-k4"); default: the shipped model's own, or a random one on a
    tiny model. ``lora``: an adapter folder (or "shapes-grpo") merged into the transformer first.
    ``dtype`` as :func:`load_pipeline` takes it (folders only: the others are built in fp32);
    ``true_cfg_scale`` and ``step_size``: None for the model's own. A classifier made for another
    model is refused (``ClassifierMismatchError``); ``spelled`` names arguments in messages."""
    from l2s.devices import default_device
    from l2s.shapes.recipes import classifier_folder, lora_folder

    check_built_in_dtype(model, dtype, spelled)
    classifier, lora = classifier_folder(classifier), lora_folder(lora)   # shipped names -> folders
    device = device or default_device()
    settings = dict(true_cfg_scale=true_cfg_scale, step_size=step_size)
    loaded = _shipped_model(classifier, lora, device, **settings) if model is None else None
    if loaded is None:
        model = "tiny" if model is None else model
        loaded = (_tiny_model(str(model), classifier, lora, device, **settings) if str(model) in TINY_MODELS else
                  _folder_model(model, classifier, lora, device, dtype, spelled, **settings))
    steerer, source = loaded
    if classifier is not None:
        getattr(steerer, "check_classifier", lambda: None)()
    return steerer, source + (f"; LoRA adapter {lora}" if lora is not None else "")


def _shipped_model(classifier, lora: Path | None, device: str, **settings):
    """The shipped shapes-world model, or None after warning that it is missing."""
    from l2s.shapes import load_shapes_steerer, shipped_assets

    assets = shipped_assets()
    if not assets.available:
        log.warning("warning: the shipped shapes model is missing (%s); falling back to the tiny RANDOM demo model: "
                    "images are noise and steering means nothing", assets.pipeline, extra=EVERY_PROCESS)
        return None
    classifier = classifier or assets.classifier
    steerer = load_shapes_steerer(assets.pipeline, classifier, true_cfg_scale=settings["true_cfg_scale"],
                                  step_size=settings["step_size"], lora=lora, device=device)
    return steerer, f"shipped shapes-world model {assets.pipeline}; classifier {classifier}"


def _tiny_model(name: str, classifier, lora: Path | None, device: str, true_cfg_scale, step_size):
    from l2s.classifier import RelationClassifier
    from l2s.demo import tiny_classifier_for
    from l2s.pipelines import wrap_pipeline

    pipe = _with_lora(tiny_pipeline(name), lora).to(device)
    if classifier is not None:
        model, source = RelationClassifier.load(classifier), f"classifier {classifier}"
    else:
        model = tiny_classifier_for(pipe, seed=0)
        source = "random untrained classifier (tiny demo: steering runs, results mean nothing)"
    options = {} if true_cfg_scale is None else {"true_cfg_scale": true_cfg_scale}
    return wrap_pipeline(pipe, model, step_size=step_size, **options), f"{_tiny_name(name)}; {source}"


def _tiny_name(name: str) -> str:
    """How a tiny model announces itself: by its own name (tiny-dev is not tiny), then what it is."""
    family, guidance = TINY_MODELS[name]
    kind = "FLUX" if family == "flux" else "Stable Diffusion"
    return f"{name} (tiny random {kind} pipeline{' with a guidance embedding' if guidance else ''})"


def _folder_model(model: str | Path, classifier, lora: Path | None, device: str, dtype, spelled, true_cfg_scale,
                  step_size):
    from l2s.classifier import RelationClassifier
    from l2s.classifier.hub import cache_entry_note
    from l2s.errors import L2SError, ModelLoadError
    from l2s.pipelines import wrap_pipeline
    from l2s.pipelines.loading import pipeline_folder
    from l2s.shapes import is_shapes_pipeline, steer_shapes_pipeline

    # Cheap checks first: a bad path should not cost loading a multi-GB pipeline.
    folder = pipeline_folder(model)  # a folder, or a hub id found in the local cache
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"no diffusers pipeline at {model} (model_index.json missing){cache_entry_note(folder)}")
    if classifier is None:
        raise L2SError(f"{spelled('classifier')} PATH is required with {spelled('model')} PATH")
    loaded = RelationClassifier.load(classifier)
    pipe = _with_lora(_folder_pipeline(folder, device, dtype), lora).to(device)
    source = f"{model}; classifier {classifier}"
    if is_shapes_pipeline(pipe):  # a model from 'l2s shapes train-model': its own sampling settings
        return steer_shapes_pipeline(pipe, loaded, true_cfg_scale=true_cfg_scale, step_size=step_size), source
    options = {} if true_cfg_scale is None else {"true_cfg_scale": true_cfg_scale}
    return wrap_pipeline(pipe, loaded, step_size=step_size, **options), source


def _folder_pipeline(model: str | Path, device: str, dtype):
    """The diffusers pipeline of a folder or cached hub id, in ``dtype`` resolved for its family on ``device``."""
    from l2s.devices import weights_dtype
    from l2s.pipelines import load_diffusers_pipeline
    from l2s.pipelines.loading import folder_family, pipeline_folder

    folder = pipeline_folder(model)
    return load_diffusers_pipeline(folder, torch_dtype=weights_dtype(dtype, device, folder_family(folder)))


def _with_lora(pipe, lora: Path | None):
    """The adapter merged into the transformer before anything wraps the pipeline."""
    if lora is not None:
        from l2s.grpo import apply_lora

        apply_lora(pipe, lora)
    return pipe
