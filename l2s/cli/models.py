"""Which model ``generate`` and ``eval`` run, and how they sample: the options, their checks before
a model loads, and the steering pipeline they name (loaded by :func:`l2s.models.load_steerer`).

Without ``--model`` the shipped shapes-world model and classifier run (``l2s/shapes/assets``);
``--model tiny`` (``tiny-dev``, ``tiny-sd``) is a random demo; a directory (or a hub id in the local
Hugging Face cache) is a diffusers pipeline.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from l2s.errors import UsageError
from l2s.models import TINY_MODELS, model_folder

from .options import flag_of, resolve_device

TRUE_CFG_HELP = ("FLUX only: classifier-free guidance against an empty prompt on the plain steps, as "
                 "diffusers' true_cfg_scale (default: 1 = none; the shapes world's own for its models)")
STEP_SIZE_HELP = ("steering step size (default: the published one per model, 5 for FLUX and SD 2.1, 7.5 for "
                  "SD 1.4; the shapes world's own for its models)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--classifier`` and ``--lora``: which model steers, shared by ``generate`` and ``eval``."""
    parser.add_argument("--model", default=None,
                        help="default: the shipped shapes-world model and classifier (l2s/shapes/assets); 'tiny' "
                             "(random tiny FLUX, offline demo; 'tiny-dev' and 'tiny-sd': dev-like FLUX and Stable "
                             "Diffusion), a local diffusers pipeline folder (FLUX, Stable "
                             "Diffusion, or a shapes-world model from 'l2s shapes train-model') or a hub id in "
                             "the local Hugging Face cache")
    parser.add_argument("--classifier", help="classifier folder (from 'l2s train': OUT/best, safetensors + "
                                             "config.json), hub id in the local cache, published .pth, or a "
                                             "shipped shapes-world classifier: " + ", ".join(SHIPPED_CLASSIFIER_NAMES))
    parser.add_argument("--lora", metavar="DIR",
                        help="a LoRA adapter (peft folder, e.g. from 'l2s shapes grpo --out DIR') merged into the "
                             "FLUX transformer before steering; 'shapes-grpo': the shipped shapes-world adapter")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """How images are sampled and steered: shared by ``generate`` and ``eval``."""
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's published setting)")
    parser.add_argument("--height", type=int, help="image height in pixels (default: the classifier's training "
                        "resolution, e.g. 512 FLUX.1-dev, 32 the shapes model; a multiple of the model's latent "
                        "cell, checked before it loads)")
    parser.add_argument("--width", type=int, help="image width in pixels (default and rule as --height)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: published per model; refused on "
                        "a FLUX model without a guidance embedding, as schnell: its guidance is --true-cfg)")
    parser.add_argument("--true-cfg", type=float, metavar="SCALE", help=TRUE_CFG_HELP)
    parser.add_argument("--step-size", type=float, metavar="ALPHA", help=STEP_SIZE_HELP)


# The names of l2s.shapes.recipes.SHIPPED_CLASSIFIERS (for --help without importing it; a test checks).
SHIPPED_CLASSIFIER_NAMES = ("shapes", "shapes-pos-only", "shapes-k4")

# Names the library defines (l2s.steer.PRESETS, l2s.capture.CAPTURE_BACKENDS, l2s.engines.ENGINE_KINDS),
# spelled out here so that --help needs no torch import; tests/cli/test_generate.py checks they agree.
SCHEDULES = ("reference", "front-loaded", "front-loaded-20", "early-exit", "fast")
EXECUTION_MODES = ("fast", "fast+compiled", "fast+cudagraphs", "reference")   # l2s.steer.MODES
CAPTURE_BACKENDS = ("sdpa", "native")
ENGINES = ("auto", "eager", "compile", "compile-cuda-graph", "cuda-graph", "onnxruntime", "tensorrt")


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    """Which schedule steers and what runs it: shared by ``generate`` and ``eval``."""
    parser.add_argument("--schedule", choices=SCHEDULES, default="reference",
                        help="steering schedule: reference (default, the published one: 16 iterations on "
                             "each steered step), front-loaded / front-loaded-20 (16 only on the first 10 / 20%% "
                             "of steps, then 1), early-exit (a step stops at p(target) >= 0.9) or fast "
                             "(front-loaded + early exit + fewer denoising steps)")
    parser.add_argument("--execution", choices=EXECUTION_MODES,
                        help="how steered iterations run: fast (default), fast+compiled (FLUX: the whole "
                             "iteration under torch.compile; the first image compiles), fast+cudagraphs "
                             "(the same replayed as CUDA graphs, CUDA only) or reference (the published "
                             "implementation, every step eager); all steer alike")
    parser.add_argument("--capture-backend", choices=CAPTURE_BACKENDS,
                        help="how steered passes compute the attention maps: sdpa (default) or native "
                             "(the l2s::selected_text_softmax op); same maps")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="FLUX plain (unsteered) steps: auto (default: eager unless a TensorRT plan for "
                             "these shapes is cached on disk) or an engine to build once and cache")


def apply_speed_args(steerer, args: argparse.Namespace) -> None:
    """Set ``--execution``, ``--capture-backend`` and ``--engine`` on a loaded steering pipeline."""
    engine = getattr(args, "engine", "auto")
    if getattr(args, "execution", None) is not None:   # checked with the other options (cli.checks)
        steerer.mode = args.execution
    backend = getattr(args, "capture_backend", None)
    if backend is not None:
        steerer.capture_backend = backend
    if not hasattr(steerer, "engine_kind"):   # Stable Diffusion: --engine was refused before it loaded
        return
    steerer.engine_kind = engine


def load_steerer(args: argparse.Namespace):
    """(steering pipeline, description of what was loaded) for ``--model``, ``--classifier`` and
    ``--lora`` (:func:`l2s.models.load_steerer`), with ``--capture-backend`` and ``--engine`` applied."""
    from l2s.errors import ClassifierMismatchError
    from l2s.models import load_steerer as load

    try:
        steerer, source = load(args.model, args.classifier, getattr(args, "lora", None), device=resolve_device(args),
                               dtype=getattr(args, "dtype", "auto"), true_cfg_scale=getattr(args, "true_cfg", None),
                               step_size=getattr(args, "step_size", None), spelled=flag_of())
    except ClassifierMismatchError as error:
        raise _naming_its_model(error, args.classifier, shipped_model=_shipped_model_runs(args)) from None
    apply_speed_args(steerer, args)
    return steerer, source


def _shipped_model_runs(args: argparse.Namespace) -> bool:
    from l2s.shapes.recipes import shipped_assets

    return args.model is None and shipped_assets().available


def _naming_its_model(error, classifier: str | None, shipped_model: bool = False):
    """A classifier made for another model, refused naming the model its training data came from
    (recorded beside an ``l2s train`` run's weights), or that no --model gave the shipped one, so
    the fix is in the message."""
    from l2s.errors import ClassifierMismatchError

    from l2s.shapes.recipes import classifier_folder, shipped_assets
    from l2s.training.checkpoints import trained_on

    if not classifier:
        return error
    classifier = str(classifier_folder(classifier))   # a shipped classifier's name -> its folder
    if Path(classifier).resolve().is_relative_to(Path(shipped_assets().pipeline).resolve()):
        return ClassifierMismatchError(f"{error}; {classifier} is a shipped classifier of the shipped shapes "
                                       "model: leave out --model")
    model = trained_on(classifier)
    if model is None:
        if shipped_model:
            return ClassifierMismatchError(f"{error}; without --model the shipped shapes-world model ran: pass "
                                           "--model PATH, the model this classifier was trained for")
        return error
    option = ("a shapes-world model: the shipped one (no --model) or the --model its 'shapes make-data' used"
              if model == "shapes-world" else f"--model {model}")
    return ClassifierMismatchError(f"{error}; {classifier} was trained on maps of the model {model!r}: pass {option}")


def check_model_dtype(args: argparse.Namespace) -> None:
    """``--dtype`` loads a model folder in that precision; the shipped model and the tiny ones are
    built in fp32, so another value there is refused rather than silently ignored."""
    from l2s.models import check_built_in_dtype

    check_built_in_dtype(args.model, getattr(args, "dtype", "auto"), spelled=flag_of())


def resolve_dtype(args: argparse.Namespace) -> str:
    """``args.dtype`` with ``auto`` resolved (and kept) to what the weights load in, so that runs
    record it: fp32 for the shipped and tiny models, else the published dtype of the model's
    family on this run's device."""
    from l2s.devices import default_device, dtype_name
    from l2s.pipelines.loading import folder_family

    if args.model is None or args.model in TINY_MODELS:
        args.dtype = "fp32"            # built in fp32 (check_model_dtype refuses another)
        return args.dtype
    folder = model_folder(args.model)
    family = folder_family(folder) if folder is not None else None
    args.dtype = dtype_name(args.dtype, args.device or default_device(), family)
    return args.dtype


def check_image_size(args: argparse.Namespace) -> None:
    """``--height`` / ``--width`` fit the model's latent grid, checked before it loads."""
    from l2s.errors import UsageError
    from l2s.pipelines.loading import size_multiple

    if getattr(args, "height", None) is None and getattr(args, "width", None) is None:
        return
    folder = model_folder(args.model)
    multiple = size_multiple(folder) if folder is not None else None
    for flag, value in (("--height", getattr(args, "height", None)), ("--width", getattr(args, "width", None))):
        if multiple and value is not None and value % multiple:
            raise UsageError(f"{flag} must be a multiple of {multiple} for this model, got {value}")


def check_family_options(args: argparse.Namespace) -> None:
    """Options that would do nothing on this kind of model are refused before it loads, from its
    configs: ``--true-cfg``, ``--lora`` and ``--engine`` on Stable Diffusion, and ``--guidance`` on a
    FLUX transformer without a guidance embedding (FLUX.1-schnell, the shapes world's), where
    diffusers ignores it."""
    from l2s.pipelines.loading import folder_family, guidance_embedded

    folder = model_folder(args.model)
    family, guidance = TINY_MODELS.get(args.model) or (
        folder_family(folder) if folder is not None else None, guidance_embedded(folder))
    if family == "sd":
        _refuse_flux_only(args)
    elif family == "flux" and getattr(args, "guidance", None) is not None and not guidance:
        raise UsageError("--guidance does nothing on this model: its transformer has no guidance embedding (as "
                         "FLUX.1-schnell's and the shapes world's); its classifier-free guidance is --true-cfg")


def _refuse_flux_only(args: argparse.Namespace) -> None:
    """``--true-cfg``, ``--lora`` and ``--engine`` given for a Stable Diffusion model."""
    given = (("--true-cfg", getattr(args, "true_cfg", None) is not None, "Stable Diffusion's guidance is --guidance"),
             ("--lora", bool(getattr(args, "lora", None)), "its adapters are FLUX transformer adapters"),
             ("--engine", getattr(args, "engine", None) not in (None, "auto"),
              "Stable Diffusion's plain steps run eager"))
    for flag, present, why in given:
        if present:
            raise UsageError(f"{flag} applies to FLUX models; {why}")
