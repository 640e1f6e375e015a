"""Invert a real image with a diffusion model and record attention maps while reconstructing it.

This is how the classifier's training data is made: FLUX (dev and schnell) by RF-Inversion
(:mod:`.flux_inversion`), Stable Diffusion by fixed-point DDIM inversion (:mod:`.sd_inversion`).
Everything is seeded through ``torch.Generator`` (VAE sampling, inversion noise), so a given
(image, prompt, seed) always gives the same maps.

The *dual* part (:func:`dual_invert`): every labelled image is inverted with the correct relation
word (``pos``) and with a relation word drawn from the wrong classes (``neg``); both keep the
true label, so the classifier cannot learn to read the relation word back from the maps.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from l2s.capture import AttentionCapture
from l2s.errors import L2SError, UnsupportedRelationError
from l2s.pipelines.families import denoiser, pipeline_family
from l2s.relations import NEUTRAL, PROMPT_PHRASE, PUBLISHED_CLASSES, canonical_class
from .flux_inversion import flux_invert
from .inversion_utils import (
    DEFAULT_STEPS,
    DEFAULT_STORE_STEPS,
    InversionResult,
    check_store_steps,
    default_image_size,
)
from .sd_inversion import sd_invert


@torch.no_grad()
def invert_and_capture(
    pipe,
    image: Image.Image,
    prompt: str,
    pairs_phrases: Sequence[tuple[str, str]],
    steps: int | None = None,
    store_steps: Sequence[int] | None = None,
    seed: int = 0,
    size: int | None = None,
    *,
    gamma: float = 1.0,
    eta: float = 1.0,
    method: str = "auto",
    num_iter: int = 5,
    map_size: int = 16,
    max_sequence_length: int = 512,
    capture: AttentionCapture | None = None,
) -> InversionResult:
    """Invert ``image`` with ``prompt`` and record the classifier inputs while reconstructing it.

    Args:
        pipe: a diffusers ``FluxPipeline`` (RF-Inversion) or ``StableDiffusionPipeline``
            (fixed-point DDIM inversion).
        image: the source image (any mode; FLUX resizes it to a square, SD centre-crops first).
        prompt: the reconstruction prompt, e.g. "A cat to the left of a dog".
        pairs_phrases: ``(subject phrase, object phrase)`` per relation to record; each phrase
            must occur in ``prompt`` (first occurrence; multi-token phrases are averaged).
        steps: sampling steps (default: 4 schnell, 50 dev / SD).
        store_steps: step indices to record (default: schnell (1, 3), others (5, 10, ..., 49)).
        seed: seeds the VAE posterior sample and the inversion noise.
        size: square image side (default :func:`default_image_size`).
        gamma, eta: RF-Inversion controller strengths of the inversion / reconstruction ODEs
            (FLUX only; published 1, 1).
        method: FLUX only. "auto" uses the closed form for every pass whose strength is 1 and the
            ODE otherwise; "exact" forces the closed form (needs gamma = eta = 1); "ode" always
            integrates (two model forwards per step, as the published code).
        num_iter: SD fixed-point iterations per inversion step (published 5).
        map_size: classifier map side.
        max_sequence_length: T5 length for FLUX (published 512, also for schnell).
        capture: an :class:`AttentionCapture` already installed on the model (reused across
            calls when building a dataset); one is installed and removed here otherwise.

    Returns:
        An :class:`InversionResult`: per stored step an ``(n_pairs, 2, C, map_size, map_size)``
        tensor, and the reconstruction PSNR.
    """
    family, steps, size, store = _checked_run(pipe, steps, size, store_steps, pairs_phrases, method)
    with _installed(pipe, capture) as capture:
        if family.startswith("flux"):
            return flux_invert(pipe, image, prompt, pairs_phrases, steps=steps, store_steps=store, seed=seed,
                               size=size, gamma=float(gamma), eta=float(eta), method=method, map_size=map_size,
                               max_sequence_length=max_sequence_length, capture=capture)
        return sd_invert(pipe, image, prompt, pairs_phrases, steps=steps, store_steps=store, seed=seed, size=size,
                         num_iter=num_iter, map_size=map_size, capture=capture)


def _checked_run(pipe, steps: int | None, size: int | None, store_steps: Sequence[int] | None,
                 pairs_phrases: Sequence[tuple[str, str]], method: str) -> tuple[str, int, int, tuple[int, ...]]:
    """The model family, steps, image side and stored steps of an inversion (defaults filled in), the
    request checked before any work."""
    family = pipeline_family(pipe)
    steps = int(DEFAULT_STEPS[family] if steps is None else steps)
    size = int(default_image_size(pipe) if size is None else size)
    if steps < 1 or size < 1:
        raise L2SError(f"steps and size must be positive (got steps={steps}, size={size})")
    store = check_store_steps(DEFAULT_STORE_STEPS[family] if store_steps is None else store_steps, steps)
    if not pairs_phrases:
        raise L2SError("no (subject, object) pairs to record")
    if method not in ("auto", "exact", "ode"):
        raise ValueError(f"method must be 'auto', 'exact' or 'ode', got {method!r}")
    return family, steps, size, store


@contextmanager
def _installed(pipe, capture: AttentionCapture | None) -> Iterator[AttentionCapture]:
    """``capture`` as it is, or one installed on the model for this call alone (removed after, also
    when the call raises: the model keeps no recording processors)."""
    if capture is not None:
        yield capture
        return
    own = AttentionCapture(denoiser(pipe))
    try:
        yield own
    finally:
        own.remove()


@dataclass(frozen=True)
class TrainingPrompt:
    """One reconstruction prompt of a labelled sample.

    ``relation_word`` is the relation written in the prompt (the class name, "is" for the
    neutral class); ``label`` the sample's true class name, the same for ``pos`` and ``neg``.
    """

    prompt: str
    prompt_type: str  # "pos" (correct relation word) or "neg" (a wrong one)
    relation_word: str
    label: str
    subject: str  # phrase whose maps go to index 0
    object: str  # phrase whose maps go to index 1


def _class_name_for(relation: str, class_names: Sequence[str]) -> str:
    wanted = canonical_class(relation)
    for name in class_names:
        if canonical_class(name) == wanted:
            return name
    raise UnsupportedRelationError(
        f"relation {relation!r} is not a class of this dataset (classes: {', '.join(class_names)})")


def _prompt(subject: str, relation_class: str, obj: str) -> str:
    return f"A {subject} {PROMPT_PHRASE[canonical_class(relation_class)]} a {obj}"


def training_prompts(subject: str, relation: str, obj: str, rng: random.Random,
                     class_names: Sequence[str] = PUBLISHED_CLASSES, dual: bool = True) -> list[TrainingPrompt]:
    """The ``pos`` (and, when ``dual``, ``neg``) prompts of one labelled sample.

    Spatial sample (``subject`` ``relation`` ``obj``): pos "A {subject} {relation} a {obj}",
    neg the same with a relation drawn uniformly (from ``rng``) among the *other* classes,
    "is" included ("A dog is a cat"). Neutral sample (``relation`` "is": ``subject`` a noun,
    ``obj`` its attribute): pos "A {attribute} {noun}", neg "A {attribute} {wrong} a {noun}";
    maps are recorded for (noun, attribute). Every prompt carries the true class as its label.
    """
    label = _class_name_for(relation, class_names)
    prompts = []
    if canonical_class(label) == NEUTRAL:
        noun, attribute = subject, obj
        prompts.append(TrainingPrompt(f"A {attribute} {noun}", "pos", label, label, noun, attribute))
    else:
        prompts.append(TrainingPrompt(_prompt(subject, label, obj), "pos", label, label, subject, obj))
    if dual:
        wrong = rng.choice(sorted(name for name in class_names if name != label))
        if canonical_class(label) == NEUTRAL:
            prompts.append(TrainingPrompt(_prompt(attribute, wrong, noun), "neg", wrong, label, noun, attribute))
        else:
            prompts.append(TrainingPrompt(_prompt(subject, wrong, obj), "neg", wrong, label, subject, obj))
    return prompts


@dataclass
class DualRecord:
    """One prompt of a dual inversion and what it recorded (maps of one (subject, object) pair)."""

    prompt: TrainingPrompt
    result: InversionResult


def dual_invert(pipe, image: Image.Image, subject: str, relation: str, obj: str, *, seed: int,
                class_names: Sequence[str] = PUBLISHED_CLASSES, dual: bool = True,
                rng: random.Random | None = None, **inversion_kwargs) -> list[DualRecord]:
    """Invert one labelled image with its pos prompt and (``dual``) a wrong-relation neg prompt.

    Both inversions use the same ``seed`` (same VAE sample and inversion noise), so the prompt is
    the only difference between them. The wrong relation is drawn from ``rng`` (default: seeded
    from ``seed``). ``inversion_kwargs`` go to :func:`invert_and_capture`.
    """
    rng = rng if rng is not None else random.Random(seed)
    records = []
    for spec in training_prompts(subject, relation, obj, rng, class_names, dual):
        result = invert_and_capture(pipe, image, spec.prompt, [(spec.subject, spec.object)], seed=seed,
                                    **inversion_kwargs)
        records.append(DualRecord(spec, result))
    return records
