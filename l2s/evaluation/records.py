"""A run directory's files: their names, atomic JSON, and one scored image's record."""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from l2s.files import atomic_write_bytes, atomic_write_text

from .detectors import Detector
from .specs import ImageResult, PromptSpec, score_image, without_verdict

BASE, STEERED, IMAGES = "base", "steered", "images"
MODES = (BASE, STEERED)
RUN_FILE, PROMPTS_FILE, RESULTS_FILE, SUMMARY_FILE = "run.json", "prompts.jsonl", "results.jsonl", "summary.json"


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (or a resumed run) never sees half a file."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (an image record: the image is
    then made again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically: a run killed midway leaves the old file or none, never half of one."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def png_problem(path: Path) -> str | None:
    """Why the image file at ``path`` cannot be trusted (it does not decode), or None."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # PIL's decoders raise many types (OSError, SyntaxError, zlib.error, ...)
        return f"{type(error).__name__}: {error}"
    return None


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")   # how PIL opens a 16-bit greyscale PNG


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB. A 16-bit greyscale one keeps its tones: PIL's own
    conversion clips every value above 255, so the image would turn white."""
    with Image.open(path) as image:
        if image.mode in _SIXTEEN_BIT:
            tones = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
            return Image.fromarray(tones).convert("RGB")
        return image.convert("RGB")


@dataclass
class ImageRecord:
    """One scored image: its result, the PNG it came from and its run metadata."""

    result: ImageResult
    image_path: Path
    meta: dict[str, Any]
    status: str  # "generated" (then scored), "scored" (an existing image), "rescored" or "resumed"


def detect_and_score(detector: Detector, image: Image.Image, spec: PromptSpec, rule: str,
                     name: str) -> tuple[ImageResult, float]:
    """Detect ``spec``'s objects in ``image`` and score its checks under ``rule``; the result
    carries the prompt, tag and ``name``; a prompt no image can show to a detector gets no verdict
    (:func:`~.specs.without_verdict`). Also returns the seconds it took."""
    started = time.perf_counter()
    detections = detector.detect(image, spec.objects)
    result = without_verdict(score_image(detections, spec.checks, rule=rule, image_size=image.size))
    result.prompt, result.tag, result.name = spec.prompt, spec.tag, name
    return result, time.perf_counter() - started
