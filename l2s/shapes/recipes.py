"""Shapes-world recipes: how the shapes model is sampled and steered, and how its classifier is made.

The shapes model (:mod:`.model`) draws the objects a prompt names but mostly ignores the
relation words, like real text-to-image models. Everything here runs the project's own pipeline
on it, exactly as on a real FLUX model:

* :func:`steer_shapes_pipeline` / :func:`load_shapes_steerer`: the model wrapped with its sampling
  settings; :func:`shipped_assets`: where the default model and classifiers live.
* :func:`named_schedule`: the published schedules of :mod:`l2s.steer` for this 12-step model, with
  its step size :data:`SHAPES_STEP_SIZE`.
* :func:`shapes_relation_samples` / :func:`make_shapes_data`: rendered two-object scenes with one
  clean relation, plus neutral "is" samples (shape + colour: "A red circle", maps of ``circle``
  and ``red``), dual-inverted with :func:`l2s.training.make_dataset` at the step indices steering
  reads. Some colours / shapes are held out of the classifier's data for the out-of-distribution check.
* :func:`train_shapes_classifier`: :func:`l2s.training.train_classifier` with a small config
  (:func:`shapes_classifier_config`) that trains on a CPU; ``dual=False`` trains the leakage
  ablation on the ``pos`` prompts only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from l2s.errors import L2SError, ModelLoadError
from l2s.relations import DIRECTIONAL, NEUTRAL, PUBLISHED_CLASSES

from .scenes import COLOURS, SHAPES, render, scene_for_relation
from .settings import (NEUTRAL_FRACTION, SHAPES_FAMILY, SHAPES_MODEL_NAME, SHAPES_SHARD_SIZE, SHAPES_STEP_SIZE,
                       SHAPES_STEPS)

# The bench's (l2s.shapes.bench) image seeds and batch; here, light, for 'l2s shapes bench --help'.
BENCH_SEEDS = (100, 101, 102, 103)
BENCH_BATCH_SIZE = 16   # images per steering call: the shapes model is small, a batch costs little memory
SHAPES_STORE_STEPS = (1, 3, 5)  # trained step indices; steered steps 0-1 -> 1, 2-3 -> 3, 4-5 -> 5
SHAPES_IMAGE_SIZE = 32         # the shipped model's; a model's own is image_size(pipe)
SHAPES_OBJECT_SIZES = (8, 12)  # as the model's training scenes
# Held out of the classifier's training data, to test generalisation to unseen words.
HELD_OUT_COLOURS = ("cyan",)
HELD_OUT_SHAPES = ("diamond",)

CLASSIFIER_DIR = "classifier"                  # inside the shipped pipeline folder
ABLATION_CLASSIFIER_DIR = "classifier_pos_only"
FIRST_BLOCKS_CLASSIFIER_DIR = "classifier_k4"  # reads the first 4 of the model's 5 blocks: a shorter backward

# The published FLUX preset (d_model 256, 4 + 4 layers) is sized for 1368 maps of 16x16; the
# shapes model has 20 maps, and its classifier must train on a 2-core CPU.
SHAPES_CLASSIFIER_SIZES = dict(d_model=128, extractor_layers=2, extractor_heads=4, extractor_ff=256,
                               pool_heads=4, head_layers=2, head_heads=4, head_ff=256, fc_dims=(128, 64),
                               dropout=0.1)
SHAPES_CLASSIFIER_LR = 3e-4    # the rate the shipped classifiers were trained with (assets/TRAINING.md)
SHAPES_CLASSIFIER_EPOCHS = 40


# --------------------------------------------------------------------------------------------
# The shipped model and its sampling settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedAssets:
    """The shipped shapes pipeline and its classifiers (paths; may not exist)."""

    pipeline: Path
    classifier: Path
    ablation_classifier: Path

    @property
    def available(self) -> bool:
        return (self.pipeline / "model_index.json").is_file() and (self.classifier / "config.json").is_file()

    @property
    def spatial_score(self) -> Path:
        """The shipped SpatialScore reward model (``l2s shapes grpo --reward spatialscore``), when shipped."""
        return self.pipeline / SPATIAL_SCORE_DIR

    @property
    def grpo_adapter(self) -> Path:
        """The shipped GRPO LoRA adapter (``--lora shapes-grpo``), when shipped."""
        return self.pipeline / GRPO_ADAPTER_DIR


SPATIAL_SCORE_DIR = "spatial_score"
GRPO_ADAPTER_DIR = "grpo_adapter"
SHIPPED_LORA = "shapes-grpo"   # the name --lora takes for the shipped adapter


# --classifier names of the shipped classifiers (in the shipped pipeline folder); anything else is
# a folder or hub id.
SHIPPED_CLASSIFIERS = {"shapes": CLASSIFIER_DIR, "shapes-pos-only": ABLATION_CLASSIFIER_DIR,
                       "shapes-k4": FIRST_BLOCKS_CLASSIFIER_DIR}


def refuse_near_shipped_name(value: str | Path | None, shipped: Sequence[str], what: str) -> None:
    """A value that is no path but close to a shipped name (``shapes-k5``, ``spatialscor``): one
    line saying which was meant (``ModelLoadError``), in place of "no such folder"."""
    import difflib

    value = None if value is None else str(value)
    if value and "/" not in value and not Path(value).exists() and value not in shipped:   # "org/name": a hub id
        close = difflib.get_close_matches(value.lower(), shipped, n=1)    # "Shapes-GRPO" too
        if close:
            raise ModelLoadError(f"{what} not found: {value} (did you mean {close[0]!r}?)")


def classifier_folder(classifier: str | Path | None) -> str | Path | None:
    """A ``--classifier`` value: a shipped classifier's folder for its name (:data:`SHIPPED_CLASSIFIERS`,
    unless a folder of that name exists here), anything else unchanged; a near miss of a shipped
    name is refused (:func:`refuse_near_shipped_name`)."""
    refuse_near_shipped_name(classifier, list(SHIPPED_CLASSIFIERS), "classifier")
    if classifier is not None and str(classifier) in SHIPPED_CLASSIFIERS and not Path(classifier).exists():
        return shipped_assets().pipeline / SHIPPED_CLASSIFIERS[str(classifier)]   # a folder of that name wins
    return classifier


SHIPPED_REWARD = "spatialscore"


def reward_model_path(reward_model: str | Path) -> Path:
    """A ``--reward-model`` value as a folder: ``spatialscore`` is the shipped one, anything else a
    path; a near miss of the name is refused."""
    refuse_near_shipped_name(reward_model, [SHIPPED_REWARD], "reward model")
    return shipped_assets().spatial_score if str(reward_model) == SHIPPED_REWARD else Path(reward_model)


def shipped_rewards() -> dict[str, Path]:
    """The named reward models and their folders: a record of the name and one of its folder's path
    are one reward (:func:`l2s.reward.identity.same_reward`)."""
    return {SHIPPED_REWARD: shipped_assets().spatial_score}


def lora_folder(lora: str | Path | None) -> Path | None:
    """A ``--lora`` value as a folder: ``shapes-grpo`` is the shipped adapter, anything else a path;
    a near miss of the name is refused."""
    if lora is None:
        return None
    refuse_near_shipped_name(lora, [SHIPPED_LORA], "LoRA adapter")
    return shipped_assets().grpo_adapter if str(lora) == SHIPPED_LORA else Path(lora)


def check_weights_folders(lora: str | Path | None = None, reward_model: str | Path | None = None) -> None:
    """A LoRA adapter and a reward model folder (shipped names resolved, a near miss refused) that
    hold what they must (``ModelLoadError``), checked before any model loads; nothing is loaded."""
    if lora is not None:
        from l2s.grpo.lora import adapter_dir

        adapter_dir(lora_folder(lora))
    if reward_model is not None:
        from l2s.reward.scorer import check_reward_model_folder

        check_reward_model_folder(reward_model_path(reward_model))


def weights_fingerprints(pipeline: str | Path | None = None, classifier: str | Path | None = None,
                         lora: str | Path | None = None, pipeline_key: str = "model_digest") -> dict:
    """Fingerprints of the local weights a run uses, for its recorded settings, so weights retrained
    at the same paths never resume its images: the pipeline folder (under ``pipeline_key``), the
    classifier (shipped names resolved; a file stands for its folder) and the LoRA adapter. A key
    is absent where there is nothing local to fingerprint (hub ids, the random tiny model)."""
    from l2s.grpo.lora import lora_digest
    from l2s.pipelines.loading import pipeline_digest

    classifier = classifier_folder(classifier)
    if classifier is not None and Path(classifier).is_file() and Path(classifier).suffix != ".pth":
        classifier = Path(classifier).parent   # OUT/best/config.json loads the whole folder
    found = {pipeline_key: None if pipeline is None else pipeline_digest(pipeline),
             "classifier_digest": None if classifier is None else classifier_digest(classifier),
             "lora_digest": None if lora is None else lora_digest(lora_folder(lora))}
    return {key: value for key, value in found.items() if value is not None}


def classifier_digest(classifier: str | Path) -> str | None:
    """:func:`l2s.files.weights_digest` of a classifier; a shipped one's ``training.json`` left out: it was
    added after runs recorded their fingerprints, and those runs must still resume."""
    from l2s.classifier.hub import TRAINING_FILE
    from l2s.files import weights_digest

    shipped = {(shipped_assets().pipeline / folder).resolve() for folder in SHIPPED_CLASSIFIERS.values()}
    return weights_digest(classifier, leave_out=(TRAINING_FILE,) if Path(classifier).resolve() in shipped else ())


def shipped_assets(root: str | Path | None = None) -> ShippedAssets:
    """Where the default shapes model lives (``l2s/shapes/assets`` unless ``root`` is given)."""
    from .model import SHIPPED_MODEL_DIR  # the model module imports diffusers: load it when used
    root = Path(root) if root is not None else SHIPPED_MODEL_DIR
    return ShippedAssets(root, root / CLASSIFIER_DIR, root / ABLATION_CLASSIFIER_DIR)


def load_shapes_steerer(pipeline_dir: str | Path | None = None, classifier: str | Path | None = None,
                        schedule=None, true_cfg_scale: float | None = None, step_size: float | None = None,
                        lora: str | Path | None = None, device: str | None = None, mode: str = "fast",
                        engine: str = "auto", capture_backend: str | None = None):
    """The shapes pipeline wrapped for steering (default: the shipped model + classifier) on
    ``device`` (default: the CPU) in execution ``mode``; ``lora``: a LoRA adapter folder merged
    into its transformer first; ``engine`` and ``capture_backend`` (None: the library's default) as
    :func:`~l2s.pipelines.wrap_pipeline` takes them."""
    from .model import load_shapes_pipeline  # the model module imports diffusers: load it when used
    from l2s.classifier import RelationClassifier

    assets = shipped_assets()
    lora = lora_folder(lora)   # a misspelt shipped name is said before anything loads
    model = RelationClassifier.load(classifier_folder(classifier) or assets.classifier)  # small: a bad one fails first
    pipe = load_shapes_pipeline(pipeline_dir or assets.pipeline, device=device)
    if lora is not None:
        from l2s.grpo import apply_lora

        apply_lora(pipe, lora)
    return steer_shapes_pipeline(pipe, model, schedule, mode, true_cfg_scale=true_cfg_scale, step_size=step_size,
                                 engine=engine, capture_backend=capture_backend)


def steer_shapes_pipeline(pipe, classifier, schedule=None, mode: str = "fast",
                          true_cfg_scale: float | None = None, step_size: float | None = None,
                          engine: str = "auto", capture_backend: str | None = None):
    """Wrap a shapes pipeline with the shapes world's sampling settings, as ``wrap_pipeline`` does
    for any shapes model: the model's training size (whatever the classifier's map grid),
    :data:`SHAPES_STEPS` steps, guidance :data:`SHAPES_TRUE_CFG` and step size
    :data:`SHAPES_STEP_SIZE` (unless ``true_cfg_scale`` / ``step_size`` are given) and the published
    rule for multi-step models, so the default ``"reference"`` schedule is 16 iterations on the
    first half of the steps (and presets follow the same rule)."""
    from l2s.pipelines import wrap_pipeline

    from .model import is_shapes_pipeline  # the model module imports diffusers: load it when used

    if not is_shapes_pipeline(pipe):
        raise L2SError(f"not a shapes-world pipeline (its VAE is a {type(getattr(pipe, 'vae', None)).__name__})")
    given = {"true_cfg_scale": true_cfg_scale, "capture_backend": capture_backend}
    return wrap_pipeline(pipe, classifier, schedule, mode, step_size=step_size, engine=engine,
                         **{k: v for k, v in given.items() if v is not None})


def named_schedule(name: str, num_steps: int = SHAPES_STEPS, step_size: float = SHAPES_STEP_SIZE):
    """A preset of :mod:`l2s.steer` by name, by the published rule for multi-step models, with the
    shapes world's step size."""
    from l2s.steer import schedule_preset

    return schedule_preset(name, SHAPES_FAMILY, num_steps, step_size)


# --------------------------------------------------------------------------------------------
# The classifier's data and training
# --------------------------------------------------------------------------------------------


def _palette(exclude_colours: Sequence[str], exclude_shapes: Sequence[str]) -> tuple[list[str], list[str]]:
    shapes = [s for s in SHAPES if s not in exclude_shapes]
    colours = [c for c in COLOURS if c not in exclude_colours]
    if not shapes or len(colours) < 1 or len(shapes) * len(colours) < 2:
        raise L2SError("holding out that much leaves fewer than two distinct objects")
    return shapes, colours


def shapes_relation_samples(n_scenes: int, seed: int = 0, *, size: int = SHAPES_IMAGE_SIZE,
                            object_sizes: tuple[int, int] = SHAPES_OBJECT_SIZES,
                            neutral_fraction: float = NEUTRAL_FRACTION,
                            exclude_colours: Sequence[str] = HELD_OUT_COLOURS,
                            exclude_shapes: Sequence[str] = HELD_OUT_SHAPES) -> list:
    """Labelled :class:`~l2s.training.RelationSample` s of ``n_scenes`` rendered two-object scenes.

    Each scene draws two distinct (colour, shape) objects and one of the four directions uniformly,
    and places them so that exactly that direction holds (:func:`l2s.shapes.scene_for_relation`):
    sample ("red circle", relation, "blue square"). A ``neutral_fraction`` of the scenes also give
    a neutral sample ("circle", "is", "red"), i.e. the prompt "A red circle" with maps of the noun
    and its colour. Images are in memory (PIL); ids are ``shapes-<seed>-<k>``.
    """
    from l2s.training import RelationSample

    shapes, colours = _palette(exclude_colours, exclude_shapes)
    kinds = [(s, c) for s in shapes for c in colours]
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(n_scenes):
        a, b = (kinds[i] for i in rng.choice(len(kinds), size=2, replace=False))
        relation = DIRECTIONAL[int(rng.integers(len(DIRECTIONAL)))]
        scene = scene_for_relation(rng, a, relation, b, size=size, min_size=object_sizes[0],
                                   max_size=object_sizes[1])
        image = render(scene)
        image_id = f"shapes-{seed}-{k}"
        subject, obj = scene.objects[0], scene.objects[1]
        samples.append(RelationSample(image_id, image, subject.name, relation, obj.name, "shapes"))
        if rng.random() < neutral_fraction:
            samples.append(RelationSample(image_id, image, subject.shape, NEUTRAL, subject.colour, "shapes"))
    return samples


def make_shapes_data(pipe, out_dir: str | Path, n_scenes: int, seed: int = 0, *, dual: bool = True,
                     exclude_colours: Sequence[str] = HELD_OUT_COLOURS,
                     exclude_shapes: Sequence[str] = HELD_OUT_SHAPES, progress: bool = True, **kwargs: Any):
    """Dual-invert :func:`shapes_relation_samples` with the shapes ``pipe`` into a map dataset.

    The dataset holds more samples than scenes: about :data:`NEUTRAL_FRACTION` of the scenes also
    give a neutral "is" sample (the summary's line says how many). Inverts over the model's
    :data:`SHAPES_STEPS` sampling steps and stores the maps at
    :data:`SHAPES_STORE_STEPS` (the indices the steered steps read), images of the model's
    :func:`image_size` and maps of its token grid (32 px and 16x16 for the shipped model: no
    resampling); resumable like :func:`l2s.training.make_dataset` (``kwargs`` go there).
    """
    from .model import image_size, token_grid  # the model module imports diffusers: load it when used
    from l2s.training import make_dataset

    samples = shapes_relation_samples(n_scenes, seed, size=image_size(pipe), exclude_colours=exclude_colours,
                                      exclude_shapes=exclude_shapes)
    settings = dict(class_names=PUBLISHED_CLASSES, steps=SHAPES_STEPS, store_steps=SHAPES_STORE_STEPS,
                    size=image_size(pipe), map_size=token_grid(pipe), dual=dual, seed=seed,
                    model_name=SHAPES_MODEL_NAME, progress=progress, shard_size=SHAPES_SHARD_SIZE)
    settings.update(kwargs)
    summary = make_dataset(samples, pipe, out_dir, **settings)
    if summary.samples_done != len(samples):   # a dataset of other scenes too: its count is not these
        return summary
    neutral = len(samples) - n_scenes
    return replace(summary, made_of=f"{n_scenes} scene{'s' * (n_scenes != 1)} + {neutral} neutral 'is' "
                                    f"sample{'s' * (neutral != 1)}")


def check_shapes_dataset(meta: dict, dataset_dir: str | Path) -> None:
    """Refuse a dataset another model's inversions made (its ``model`` setting is not the shapes
    world's): the shapes classifier is that world's; datasets that record no model (synthetic,
    resized) are taken."""
    model = (meta.get("settings") or {}).get("model")
    if model is not None and model != SHAPES_MODEL_NAME:
        raise L2SError(f"{dataset_dir} was made by 'l2s make-data' with the model {model!r}, not by 'l2s shapes "
                       f"make-data': train its classifier with 'l2s train {dataset_dir} --out DIR'")


def shapes_classifier_config(dataset_dir: str | Path, layers: int | None = None, **overrides: Any):
    """The schnell preset resized by :data:`SHAPES_CLASSIFIER_SIZES`, completed from the dataset;
    ``layers=K``: reading only the model's first K blocks (of the dataset's layers)."""
    from l2s.classifier import preset
    from l2s.training import load_dataset_meta, with_first_blocks

    meta = load_dataset_meta(dataset_dir)
    check_shapes_dataset(meta, dataset_dir)
    fields = dict(SHAPES_CLASSIFIER_SIZES, class_names=tuple(meta["class_names"]), map_size=meta["map_size"],
                  orig_map_size=meta.get("orig_map_size"), layer_layout=meta.get("layer_layout"),
                  timesteps=tuple(meta["store_steps"]), num_timesteps=meta["num_steps"])
    fields.update(overrides)
    config = preset("flux-schnell", channels=meta["channels"], **fields)
    return config if layers is None else with_first_blocks(config, meta, layers)


def train_shapes_classifier(dataset_dir: str | Path, out_dir: str | Path, *, dual: bool = True,
                            epochs: int = SHAPES_CLASSIFIER_EPOCHS, lr: float = SHAPES_CLASSIFIER_LR,
                            batch_size: int = 64, seed: int = 0, progress: bool = True, layers: int | None = None,
                            resume: bool = True, on_resume=None, **overrides: Any):
    """Train the shapes classifier (``dual=False``: pos prompts only, the leakage ablation;
    ``layers=K``: a classifier of the first K blocks, read from the same maps; ``on_resume``: as
    :func:`l2s.training.train_classifier` takes it)."""
    from l2s.training import train_classifier

    config = shapes_classifier_config(dataset_dir, layers, **overrides)
    return train_classifier(dataset_dir, out_dir, config, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                            prompt_types=None if dual else ("pos",), progress=progress, resume=resume,
                            on_resume=on_resume)
