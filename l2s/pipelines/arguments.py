"""The steering pipelines' arguments, checked before any work, with the messages the CLI gives.

Every check raises :class:`~l2s.errors.UsageError` naming the argument (``num_inference_steps``
here, ``--steps`` on the command line: the same sentence). Nothing is replaced by a default:
``0`` steps or ``height=0`` is an error, not "the model's default". Also here: the warnings a
steered call gives before it runs (doubtful token mapping, maps resampled to another grid, a
classifier trained on another model's maps).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from l2s.classifier import RelationClassifier
from l2s.classifier.hub import base_model_text, recorded_base_model
from l2s.errors import ClassifierMismatchError, UsageError
from l2s.values import finite_number, image_side, positive_int, seed_value, step_count
from .families import MODEL_KINDS, canonical_model_name, model_name, pipeline_family, pixels_per_token

if TYPE_CHECKING:
    from l2s.steer import Schedule

log = logging.getLogger(__name__)


def check_classifier_argument(classifier) -> RelationClassifier:
    """``classifier`` itself, or an error saying what a steering pipeline needs instead."""
    if not isinstance(classifier, RelationClassifier):
        shown = repr(classifier) if isinstance(classifier, (str, type(None))) else type(classifier).__name__
        raise UsageError(f"classifier must be a RelationClassifier, got {shown}; load one with "
                         "l2s.classifier.RelationClassifier.load(path)")
    return classifier


def checked_capture_backend(backend: str, mode="fast") -> str:
    """``backend`` if the fast modes know it and ``mode`` (a name or ExecutionMode) computes maps with it."""
    from l2s.capture import CAPTURE_BACKENDS
    from l2s.steer import DEFAULT_CAPTURE_BACKEND, execution_mode

    if backend not in CAPTURE_BACKENDS:
        raise UsageError(f"unknown capture backend {backend!r}; expected one of {', '.join(CAPTURE_BACKENDS)}")
    if backend != DEFAULT_CAPTURE_BACKEND and execution_mode(mode).name == "reference":
        raise UsageError(f"capture backend {backend!r} applies to the fast modes: mode 'reference' computes "
                         "its maps as the published code does")
    return backend


def check_capture_kernels(backend: str, device: torch.device | str) -> None:
    """The kernels of capture ``backend`` exist for ``device`` here (the native op needs l2s_fast on
    CPU, Triton or l2s_fast's CUDA kernels on a GPU): refused before any work, not mid-call."""
    from l2s.ops import require_kernels

    if backend != "native":
        return
    try:
        require_kernels(device)
    except RuntimeError as error:
        raise UsageError(str(error)) from None


def checked_schedule(schedule: Schedule | str | None) -> Schedule | str | None:
    """A preset name is checked when the pipeline is made, not at its first call."""
    from l2s.steer import PRESETS, Schedule

    if isinstance(schedule, str) and schedule not in PRESETS:
        raise UsageError(f"unknown schedule {schedule!r}; expected a Schedule or one of {', '.join(PRESETS)}")
    if not isinstance(schedule, (Schedule, str, type(None))):
        raise UsageError(f"schedule must be a Schedule or a preset name, got {type(schedule).__name__}")
    return schedule


def check_call(steerer, prompt, *, num_inference_steps, height, width, guidance_scale, seed, num_images,
               steer, schedule, latents, progress) -> None:
    """Refuse a ``SteeringPipeline.__call__`` whose arguments cannot work, before any work."""
    from l2s.steer import Schedule

    images = len(image_batch(prompt, seed, num_images) or ()) or num_images
    if num_inference_steps is not None:
        step_count(num_inference_steps, "num_inference_steps")
    for name, value in (("height", height), ("width", width)):
        if value is not None:
            image_side(value, name)
    if guidance_scale is not None and finite_number(guidance_scale, "guidance_scale") < 0:
        raise UsageError(f"guidance_scale must be 0 or more, got {guidance_scale!r}")
    positive_int(num_images, "num_images")
    for name, value in (("steer", steer), ("progress", progress)):
        if not isinstance(value, bool):
            raise UsageError(f"{name} must be True or False, got {value!r}")
    if schedule is not None and not isinstance(schedule, (str, Schedule)):
        raise UsageError(f"schedule must be a preset name or an l2s.steer.Schedule, got {type(schedule).__name__}")
    if latents is not None:
        check_latents(latents, expected_latents_shape(steerer, height, width, images))
    if steer:
        check_capture_kernels(steerer.capture_backend, steerer.device)
        check_base_family(steerer.pipe, steerer.classifier)


def image_batch(prompt, seed, num_images: int = 1) -> list[tuple[str, int]] | None:
    """One (prompt, seed) per image when ``prompt`` or ``seed`` is a list (the other one then a
    list of the same length, or one value for every image); None for one prompt and one seed."""
    prompts = list(prompt) if isinstance(prompt, (list, tuple)) else None
    seeds = list(seed) if isinstance(seed, (list, tuple)) else None
    for text in prompts if prompts is not None else [prompt]:
        if not isinstance(text, str):
            raise UsageError(f"prompt must be a string or a list of strings, got {type(text).__name__}")
    for value in seeds if seeds is not None else [seed]:
        seed_value(value)
    if prompts is None and seeds is None:
        return None
    if not (prompts if prompts is not None else seeds):
        raise UsageError("prompt and seed lists must not be empty")
    if prompts is not None and seeds is not None and len(prompts) != len(seeds):
        raise UsageError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt, or one seed")
    if num_images != 1:
        raise UsageError("num_images must be 1 when prompt or seed is a list (one image per entry)")
    count = len(prompts if prompts is not None else seeds)
    return list(zip(prompts or [prompt] * count, seeds or [seed] * count))


def expected_latents_shape(steerer, height: int | None, width: int | None, num_images: int) -> tuple[int, ...]:
    """The initial latents a call of ``steerer`` takes, in the pipeline's own layout (FLUX: packed
    2x2 patches, ``(images, tokens, channels)``; SD: ``(images, channels, h, w)``)."""
    pipe = steerer.pipe
    if hasattr(pipe, "transformer"):
        side = steerer.default_size()
        multiple = pixels_per_token(pipe)
        height, width = (side if height is None else height), (side if width is None else width)
        return (num_images, (height // multiple) * (width // multiple), pipe.transformer.config.in_channels)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = (side if height is None else height), (side if width is None else width)
    factor = pipe.vae_scale_factor
    return (num_images, pipe.unet.config.in_channels, height // factor, width // factor)


def check_latents(latents, shape: tuple[int, ...]) -> None:
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise UsageError(f"latents must be a floating-point torch.Tensor, got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(shape):
        raise UsageError(f"latents have shape {tuple(latents.shape)}; this call needs {tuple(shape)} "
                         "(images, then the pipeline's own latent layout)")
    if not bool(torch.isfinite(latents).all()):
        raise UsageError("latents contain non-finite values (NaN or inf)")


def announce_steering(steerer, plan, doubts: list[str]) -> None:
    """Log, one line each, what makes this call's steering doubtful (the plan's warnings, the call's
    ``doubts`` from :func:`call_warnings`); a pipeline says each line once (an evaluation steers one
    prompt for many seeds)."""
    say_once(steerer, [*plan.warnings, *doubts])


def call_warnings(steerer, height: int | None, width: int | None) -> list[str]:
    """What makes a steered call doubtful beyond its prompt: a classifier trained on another model's
    maps, maps of another grid than the classifier's."""
    lines = [base_model_warning(steerer.pipe, steerer.classifier), map_grid_warning(steerer, height, width)]
    return [line for line in lines if line]


SAID_LINES_KEPT = 1024   # a service's free-text prompts make new lines forever: the oldest are forgotten


def say_once(owner, lines) -> None:
    """Log each line (None: nothing) the first time ``owner`` (a pipeline) says it (of the last
    :data:`SAID_LINES_KEPT` distinct lines); in a spread run, each machine's first process alone
    (what every rank meets would show once per rank; results keep each image's own warnings)."""
    from l2s.distributed import first_on_machine

    said = owner.__dict__.setdefault("_l2s_warned", {})     # a dict keeps the order lines were said in
    for line in lines:
        if line and line not in said:
            said[line] = None
            if len(said) > SAID_LINES_KEPT:
                del said[next(iter(said))]
            if first_on_machine():
                log.warning("warning: %s", line)


def map_grid_warning(steerer, height: int | None, width: int | None) -> str | None:
    """:func:`grid_mismatch_warning` of a steering pipeline at this size (None for SD: its maps
    come from layers of several resolutions, no single grid)."""
    pipe = steerer.pipe
    if not hasattr(pipe, "transformer"):
        return None
    side, multiple = steerer.default_size(), pixels_per_token(pipe)
    height, width = (side if height is None else height), (side if width is None else width)
    if height % multiple or width % multiple:
        return None  # a size the model refuses: its error comes instead
    return grid_mismatch_warning((height // multiple, width // multiple), steerer.classifier.config, height, width)


def grid_mismatch_warning(grid: tuple[int, int], config, height: int, width: int) -> str | None:
    """A line when the classifier was trained on maps of another token grid than a FLUX model
    gives at this size: the maps are resampled to the classifier's size, which keeps where things
    are but not how sharp; steering still runs (the published FLUX.1-dev classifier itself reads
    32x32 grids resampled to 16x16)."""
    trained = config.orig_map_size or config.map_size
    if grid == (trained, trained):
        return None
    how = "read as" if grid == (config.map_size, config.map_size) else "resampled to"
    return (f"the classifier was trained on maps of a {trained}x{trained} token grid, but this model at "
            f"{height}x{width} px gives {grid[0]}x{grid[1]}: its maps are {how} the classifier's "
            f"{config.map_size}x{config.map_size} input (steering may be weaker)")


def _trained_on(classifier) -> tuple[str | None, str | None]:
    """(model, family) the classifier's training record names (:func:`recorded_base_model`), the model
    spelled as :func:`model_name` spells the steered one."""
    model, family = recorded_base_model(getattr(classifier, "training_record", None))
    return (None if model is None else canonical_model_name(model)), family


def base_model_warning(pipe, classifier) -> str | None:
    """A line when the classifier's training record names another model than ``pipe``: another family,
    or another kind (the shapes world against any other model). Steering runs, as a transfer between
    models of one architecture (FLUX.1-dev and -schnell) is a use, but reads maps it was not trained
    on. Two folders are not compared: a copy of the same weights elsewhere would warn falsely. None
    where the record names nothing (classifiers saved before)."""
    model, family = _trained_on(classifier)
    steered, steered_family = model_name(pipe), pipeline_family(pipe)
    # A record naming no model (classifiers saved before it was recorded) doubts no kind.
    other_name = model is not None and model != steered and (model in MODEL_KINDS or steered in MODEL_KINDS)
    other_family = family is not None and family != steered_family
    if not (other_name or other_family):
        return None
    return (f"the classifier was trained on maps of {base_model_text(model, family, other_family)} but steers "
            f"{base_model_text(steered, steered_family, other_family)}: it reads maps it was not trained on "
            "(steering may be weaker)")


def check_base_family(pipe, classifier) -> None:
    """Refuse a classifier whose training record says a FLUX model's maps trained it on a Stable
    Diffusion model, or the reverse: one that names its layers is refused by the capture already, but
    one that does not would read another kind of map of the same count."""
    model, family = _trained_on(classifier)
    steered = pipeline_family(pipe)
    if family is not None and _architecture(family) != _architecture(steered):
        raise ClassifierMismatchError(
            f"the classifier was trained on maps of {base_model_text(model, family, True)}, a {_architecture(family)} "
            f"model, but this is a {_architecture(steered)} model ({steered}): their maps differ; use a classifier "
            "trained for this model")


def _architecture(family: str) -> str:
    return "FLUX" if family.startswith("flux") else "Stable Diffusion"
