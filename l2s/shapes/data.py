"""Training data of the shapes model: seeded random scenes, rendered, captioned and tokenised.

Training captions name every object ("a red circle, a blue square and a green triangle") but
state a relation only rarely (``relation_caption_rate``), so, like real models, the model draws
the named objects but places them largely regardless of the relation words.
"""
from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2s.files import atomic_torch_save

from .scenes import Scene, random_scene, render_array
from .tokenizer import TEXT_WINDOW, shapes_t5_tokenizer, tokenize_t5

log = logging.getLogger(__name__)


@dataclass
class SceneDataset:
    """Pre-rendered scenes: uint8 images (N, H, W, 3), captions and T5 token ids (N, window)."""

    images: torch.Tensor
    captions: list[str]
    token_ids: torch.Tensor
    scenes: list[dict]
    relation_stated: torch.Tensor


def scene_caption(scene: Scene, rng: np.random.Generator, relation_caption_rate: float) -> tuple[str, bool]:
    """A training caption: all objects by colour and shape; a relation with probability ``rate``
    (a random clean one of the scene, when it has any)."""
    clean = scene.relations()
    if clean and rng.random() < relation_caption_rate:
        return scene.caption(mention_relation=True, relation=clean[int(rng.integers(len(clean)))]), True
    return scene.caption(), False


def render_dataset(count: int, seed: int, size: int, relation_caption_rate: float,
                   n_objects: tuple[int, int], object_sizes: tuple[int, int],
                   window: int = TEXT_WINDOW, progress: bool = True) -> SceneDataset:
    """Render ``count`` seeded random scenes of :mod:`l2s.shapes` with their captions."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    captions, scenes, stated = [], [], []
    for k in tqdm(range(count), desc="rendering scenes", leave=False, mininterval=2, disable=not progress):
        scene = random_scene(rng, size=size, n_objects=n_objects, min_size=object_sizes[0],
                             max_size=object_sizes[1])
        images[k] = render_array(scene)
        caption, has_relation = scene_caption(scene, rng, relation_caption_rate)
        captions.append(caption)
        stated.append(has_relation)
        scenes.append(scene.to_dict())
    token_ids = tokenize_t5(shapes_t5_tokenizer(), captions, window)
    return SceneDataset(torch.from_numpy(images), captions, token_ids, scenes, torch.tensor(stated))


def load_or_render_dataset(cache_dir: Path, progress: bool = True, **kwargs: Any) -> SceneDataset:
    """:func:`render_dataset`, cached as a ``.pt`` file named after its settings (a damaged cache
    file is rendered again)."""
    key = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items())).replace(" ", "").replace(",", "_")
    path = cache_dir / f"scenes-{key}.pt"
    if path.is_file():
        try:
            data = torch.load(path, weights_only=True)
            return SceneDataset(data["images"], data["captions"], data["token_ids"],
                                json.loads(data["scenes"]), data["relation_stated"])
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as error:
            log.warning("%s is damaged (%s): rendering the scenes again", path, type(error).__name__)
    dataset = render_dataset(**kwargs, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_save({"images": dataset.images, "captions": dataset.captions, "token_ids": dataset.token_ids,
                 "scenes": json.dumps(dataset.scenes), "relation_stated": dataset.relation_stated}, path)
    return dataset


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never corrupts ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(obj, path)
