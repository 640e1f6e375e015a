"""Which model ``generate`` and ``eval`` run, and how they sample: loading the steering pipeline.

Without ``--model`` the shipped shapes-world model and classifier run (``l2s/shapes/assets``);
``--model tiny`` is the random demo; a directory (or a hub id in the local Hugging Face cache) is a
diffusers pipeline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from l2s.errors import L2SError, ModelLoadError, UsageError

from .options import resolve_device, torch_dtype

TRUE_CFG_HELP = ("FLUX only: classifier-free guidance against an empty prompt on the plain steps, as "
                 "diffusers' true_cfg_scale (default: 1 = none; the shapes world's own for its models)")
STEP_SIZE_HELP = ("steering step size (default: the published one per model, 5 for FLUX and SD 2.1, 7.5 for "
                  "SD 1.4; the shapes world's own for its models)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--classifier`` and ``--lora``: which model steers, shared by ``generate`` and ``eval``."""
    parser.add_argument("--model", default=None,
                        help="default: the shipped shapes-world model and classifier (l2s/shapes/assets); 'tiny' "
                             "(random tiny FLUX, offline demo), a local diffusers pipeline folder (FLUX, Stable "
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
    """(steering pipeline, description of what was loaded) for ``--model`` and ``--classifier``,
    with ``--capture-backend`` and ``--engine`` applied."""
    from l2s.errors import ClassifierMismatchError

    try:
        steerer, source = _load_steerer(args)
        if args.classifier:
            getattr(steerer, "check_classifier", lambda: None)()
    except ClassifierMismatchError as error:
        raise _naming_its_model(error, args.classifier, shipped_model=args.model is None) from None
    apply_speed_args(steerer, args)
    if getattr(args, "lora", None):
        from l2s.shapes.recipes import lora_folder

        source += f"; LoRA adapter {lora_folder(args.lora)}"
    return steerer, source


def _naming_its_model(error, classifier: str | None, shipped_model: bool = False):
    """A classifier made for another model, refused naming the model its training data came from
    (recorded beside an ``l2s train`` run's weights), or that no --model gave the shipped one, so
    the fix is in the message."""
    from l2s.errors import ClassifierMismatchError

    from l2s.shapes.recipes import shipped_assets
    from l2s.training.checkpoints import trained_on

    if not classifier:
        return error
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


def model_folder(args: argparse.Namespace):
    """The local pipeline folder ``--model`` names (the shipped one by default), before loading;
    None for the tiny models built in code and hub ids not in the local cache."""
    from l2s.errors import L2SError
    from l2s.pipelines.loading import pipeline_folder
    from l2s.shapes.recipes import shipped_assets

    if args.model is None:
        return shipped_assets().pipeline if shipped_assets().available else None
    if args.model == "tiny":           # built in code; any other name is a folder or hub id
        return None
    try:
        folder = pipeline_folder(args.model)
    except L2SError:
        return None                    # loading says why, in its own words
    return folder if Path(folder).is_dir() else None


def check_model_dtype(args: argparse.Namespace, tiny_names: tuple[str, ...] = ("tiny",)) -> None:
    """``--dtype`` loads a model folder in that precision; the shipped model and the tiny ones
    (``tiny_names``, built in code) are built in fp32, so another value there is refused rather
    than silently ignored."""
    dtype = getattr(args, "dtype", "auto")
    if (args.model is None or args.model in tiny_names) and dtype not in ("auto", "fp32"):
        which = "the shipped shapes model" if args.model is None else \
            "the tiny demo model" if args.model == "tiny" else f"the tiny demo model {args.model!r}"
        raise UsageError(f"--dtype {dtype}: {which} runs in fp32 only (--dtype applies to --model PATH)")


def resolve_dtype(args: argparse.Namespace) -> str:
    """``args.dtype`` with ``auto`` resolved (and kept) to what the weights load in, so that runs
    record it: fp32 for the shipped and tiny models, else the published dtype of the model's
    family on this run's device."""
    from l2s.pipelines.loading import folder_family

    from .options import default_device, dtype_name

    if args.model in (None, "tiny"):
        args.dtype = "fp32"            # built in fp32 (check_model_dtype refuses another)
        return args.dtype
    folder = model_folder(args)
    family = folder_family(folder) if folder is not None else None
    args.dtype = dtype_name(args.dtype, args.device or default_device(), family)
    return args.dtype


def check_image_size(args: argparse.Namespace) -> None:
    """``--height`` / ``--width`` fit the model's latent grid, checked before it loads."""
    from l2s.errors import UsageError
    from l2s.pipelines.loading import size_multiple

    if getattr(args, "height", None) is None and getattr(args, "width", None) is None:
        return
    folder = model_folder(args)
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

    folder = model_folder(args)
    family = "flux" if args.model == "tiny" else folder_family(folder) if folder is not None else None
    if family == "sd":
        _refuse_flux_only(args)
    elif family == "flux" and getattr(args, "guidance", None) is not None and not guidance_embedded(folder):
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


def weights_digests(args: argparse.Namespace) -> dict:
    """Fingerprints of the local weights behind --model, --classifier and --lora (shipped names
    resolved; a --model hub id by its local snapshot, a --classifier hub id not at all), for a
    run's settings: a retrained classifier or adapter saved at the same path must not resume an
    earlier run's images. The random tiny model has none."""
    from l2s.shapes.recipes import shipped_assets, weights_fingerprints

    shipped = args.model is None and shipped_assets().available
    classifier = args.classifier if args.classifier is not None or not shipped else shipped_assets().classifier
    return weights_fingerprints(model_folder(args), classifier, getattr(args, "lora", None))


def _load_steerer(args: argparse.Namespace):
    from l2s.shapes.recipes import classifier_folder

    resolved = classifier_folder(args.classifier)   # a shipped classifier's name -> its folder (a string:
    args.classifier = None if resolved is None else str(resolved)   # run settings are JSON)
    true_cfg = getattr(args, "true_cfg", None)
    step_size = getattr(args, "step_size", None)
    if args.model is None:
        loaded = _shipped_model(args, true_cfg, step_size)
        if loaded is not None:
            return loaded
        args.model = "tiny"
    flux_options = {} if true_cfg is None else {"true_cfg_scale": true_cfg}
    if args.model == "tiny":
        return _tiny_model(args, step_size, flux_options)
    return _model_dir(args, true_cfg, step_size, flux_options)


def _with_lora(pipe, args: argparse.Namespace):
    """``--lora DIR``: the adapter merged into the transformer before anything wraps the pipeline."""
    if getattr(args, "lora", None):
        from l2s.grpo import apply_lora
        from l2s.shapes.recipes import lora_folder

        apply_lora(pipe, lora_folder(args.lora))
    return pipe


def _shipped_model(args: argparse.Namespace, true_cfg: float | None, step_size: float | None):
    """The shipped shapes-world model (the default), or None after saying it is missing."""
    from l2s.shapes import load_shapes_steerer, shipped_assets

    assets = shipped_assets()
    if assets.available:
        classifier = args.classifier or assets.classifier
        return (load_shapes_steerer(assets.pipeline, classifier, true_cfg_scale=true_cfg, step_size=step_size,
                                    lora=getattr(args, "lora", None), device=resolve_device(args)),
                f"shipped shapes-world model {assets.pipeline}; classifier {classifier}")
    print(f"l2s: warning: the shipped shapes model is missing ({assets.pipeline}); falling back to the "
          "tiny RANDOM demo model: images are noise and steering means nothing", file=sys.stderr)
    return None


def _tiny_model(args: argparse.Namespace, step_size: float | None, flux_options: dict):
    from l2s.classifier import RelationClassifier
    from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
    from l2s.pipelines import wrap_pipeline

    pipe = _with_lora(tiny_flux_pipeline(seed=0), args).to(resolve_device(args))
    if args.classifier:
        classifier = RelationClassifier.load(args.classifier)
        source = f"classifier {args.classifier}"
    else:
        classifier = tiny_classifier_for(pipe, seed=0)
        source = "random untrained classifier (tiny demo: steering runs, results mean nothing)"
    return (wrap_pipeline(pipe, classifier, step_size=step_size, **flux_options),
            f"tiny random FLUX pipeline; {source}")


def _model_dir(args: argparse.Namespace, true_cfg: float | None, step_size: float | None, flux_options: dict):
    from l2s.classifier import RelationClassifier
    from l2s.classifier.hub import cache_entry_note
    from l2s.pipelines import load_diffusers_pipeline, wrap_pipeline
    from l2s.pipelines.loading import folder_family, pipeline_folder

    # Cheap checks first: a bad path should not cost loading a multi-GB pipeline.
    folder = pipeline_folder(args.model)  # a folder, or a hub id found in the local cache
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"no diffusers pipeline at {args.model} (model_index.json missing)"
                             f"{cache_entry_note(folder)}")
    if not args.classifier:
        raise L2SError("--classifier PATH is required with --model PATH")
    classifier = RelationClassifier.load(args.classifier)
    dtype = torch_dtype(args.dtype, resolve_device(args), folder_family(folder))
    pipe = _with_lora(load_diffusers_pipeline(folder, torch_dtype=dtype), args)
    pipe.to(args.device)
    source = f"{args.model}; classifier {args.classifier}"
    from l2s.shapes import is_shapes_pipeline, steer_shapes_pipeline

    if is_shapes_pipeline(pipe):  # a model from 'l2s shapes train-model': its own sampling settings
        return steer_shapes_pipeline(pipe, classifier, true_cfg_scale=true_cfg, step_size=step_size), source
    return wrap_pipeline(pipe, classifier, step_size=step_size, **flux_options), source
