"""Detectors: find the best box per label in an image.

Detectors are pluggable (:class:`Detector`): :class:`TransformersDetector` loads an
open-vocabulary model (OWLv2, OWL-ViT, Grounding DINO, CLIPSeg) from a local directory; other
detectors (such as the synthetic shapes world's exact one) are passed to :func:`load_detector`
by name.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from l2s.errors import ModelLoadError
from .components import largest_component_box
from .geometry import Box, Detection


@runtime_checkable
class Detector(Protocol):
    """Finds the best box for each requested label in an image (``None`` when not found)."""

    def detect(self, image: Image.Image, labels: Sequence[str]) -> dict[str, Detection | None]: ...


def clipseg_mask_to_box(probabilities: np.ndarray, image_size: tuple[int, int],
                        threshold: int = 120) -> tuple[Box, float] | None:
    """Learn-to-Steer's CLIPSeg post-processing for one query.

    ``probabilities`` is the sigmoid mask (h, w) in [0, 1]; pixels with ``uint8(p*255) > threshold``
    form the mask, the largest (8-connected) component is boxed and rescaled from the mask's
    grid to ``image_size`` = (width, height). Returns (box, mean probability inside it) or None.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    binary = (probabilities * 255).astype(np.uint8) > threshold
    found = largest_component_box(binary, connectivity=8)
    if found is None:
        return None
    (x1, y1, x2, y2), component = found
    mask_h, mask_w = probabilities.shape
    sx, sy = image_size[0] / mask_w, image_size[1] / mask_h
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy), float(probabilities[component].mean())


def best_detection_per_label(labels: Sequence[str], label_indices: Sequence[int],
                             boxes: Sequence[Sequence[float]], scores: Sequence[float],
                             image_size: tuple[int, int] | None = None) -> dict[str, Detection | None]:
    """Keep the highest-scoring box of each label (``label_indices`` index into ``labels``).

    With ``image_size`` = (width, height) boxes are clipped to the image (detectors may
    predict boxes reaching past the border).
    """
    best: dict[str, Detection | None] = {label: None for label in labels}
    for index, box, score in zip(label_indices, boxes, scores):
        label = labels[int(index)]
        current = best[label]
        if current is None or float(score) > current.score:
            x1, y1, x2, y2 = (float(v) for v in box)
            if image_size is not None:
                width, height = image_size
                x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
                y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            best[label] = Detection(label, (x1, y1, x2, y2), float(score))
    return best


# model_type in config.json -> how to query and post-process it.
_DETECTOR_FAMILIES = {
    "owlv2": "owl", "owlvit": "owl", "grounding-dino": "grounding_dino",
    "mm-grounding-dino": "grounding_dino", "clipseg": "clipseg",
}
_DEFAULT_QUERY = {"owl": "a photo of a {}", "grounding_dino": "a {}.", "clipseg": "a {}"}


class TransformersDetector:
    """Open-vocabulary detector loaded from a local transformers checkpoint directory.

    Supports OWLv2 / OWL-ViT (``post_process_grounded_object_detection``, highest score per
    label), Grounding DINO (one query per label, so every box belongs to that label) and
    CLIPSeg (Learn-to-Steer's rule: sigmoid mask, ``×255 > mask_threshold``, box of the largest
    component; the score is the mean mask probability inside it, and ``threshold`` is not used).
    ``threshold`` defaults to GenEval's detection confidence 0.3. Never downloads: a missing or unreadable
    directory raises ``ModelLoadError``.
    """

    def __init__(self, path: str | Path, threshold: float = 0.3, device: str = "cpu",
                 query_template: str | None = None, mask_threshold: int = 120) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no detector checkpoint at {path} (expected a directory with config.json; "
                                 "download it elsewhere and pass its local path)")
        try:
            from transformers import (
                AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor,
                CLIPSegForImageSegmentation,
            )
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            family = _DETECTOR_FAMILIES.get(config.model_type)
            if family is None:
                raise ModelLoadError(f"unsupported detector type {config.model_type!r} at {path} "
                                     f"(supported: {', '.join(_DETECTOR_FAMILIES)})")
            model_class = CLIPSegForImageSegmentation if family == "clipseg" else AutoModelForZeroShotObjectDetection
            self.model = model_class.from_pretrained(path, local_files_only=True).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except ModelLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - any loading failure is the user's file problem
            raise ModelLoadError(f"cannot load detector from {path}: {error}") from error
        self.family = family
        self.threshold = threshold
        self.device = device
        self.query_template = query_template or _DEFAULT_QUERY[family]
        self.mask_threshold = mask_threshold

    def detect(self, image: Image.Image, labels: Sequence[str]) -> dict[str, Detection | None]:
        """Best box per label (``None`` below the threshold or not found)."""
        import torch

        labels = list(dict.fromkeys(labels))
        if not labels:
            return {}
        image = image.convert("RGB")
        with torch.no_grad():
            if self.family == "owl":
                return self._detect_owl(image, labels)
            if self.family == "grounding_dino":
                return self._detect_grounding_dino(image, labels)
            return self._detect_clipseg(image, labels)

    def _detect_owl(self, image: Image.Image, labels: list[str]) -> dict[str, Detection | None]:
        queries = [self.query_template.format(label) for label in labels]
        inputs = self.processor(text=[queries], images=image, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(image.height, image.width)],
            text_labels=[labels])[0]
        return best_detection_per_label(labels, result["labels"].tolist(), result["boxes"].tolist(),
                                        result["scores"].tolist(), image.size)

    def _detect_grounding_dino(self, image: Image.Image, labels: list[str]) -> dict[str, Detection | None]:
        found: dict[str, Detection | None] = {}
        for label in labels:  # one query each: decoded phrases need no matching back to labels
            inputs = self.processor(images=image, text=self.query_template.format(label).lower(),
                                    return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            result = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=self.threshold,
                target_sizes=[(image.height, image.width)])[0]
            found.update(best_detection_per_label([label], [0] * len(result["scores"]),
                                                  result["boxes"].tolist(), result["scores"].tolist(), image.size))
        return found

    def _detect_clipseg(self, image: Image.Image, labels: list[str]) -> dict[str, Detection | None]:
        import torch

        queries = [self.query_template.format(label) for label in labels]
        inputs = self.processor(text=queries, images=[image] * len(queries), padding="max_length",
                                return_tensors="pt").to(self.device)
        logits = self.model(**inputs).logits
        probabilities = torch.sigmoid(logits.reshape(len(queries), *logits.shape[-2:])).cpu().numpy()
        found: dict[str, Detection | None] = {}
        for label, mask in zip(labels, probabilities):
            boxed = clipseg_mask_to_box(mask, image.size, self.mask_threshold)
            found[label] = Detection(label, *boxed) if boxed else None
        return found


def load_detector(name: str, threshold: float = 0.3, device: str = "cpu",
                  named: Mapping[str, Callable[[], Detector]] | None = None) -> Detector:
    """The detector ``named[name]()`` when ``name`` is one of ``named``; otherwise a local
    transformers detector directory (OWLv2, OWL-ViT, Grounding DINO, CLIPSeg) with confidence
    ``threshold``."""
    if named and name in named:
        return named[name]()
    return TransformersDetector(name, threshold=threshold, device=device)
