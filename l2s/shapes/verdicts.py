"""How a shapes-world image is judged: strictly (colour and shape), on colours alone, and whether
every object was drawn at all."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from l2s.evaluation import PromptSpec, RelationCheck, score_image

VERDICTS = ("strict", "colour", "found")


def colour_only(spec: PromptSpec) -> PromptSpec:
    """The same prompt judged on the objects' colours only (labels "red", "blue").

    The shapes model often draws an object's colour in the right place with a shape the detector
    will not accept; with distinct colours per prompt, the colour blobs alone still show where
    the model put each object, which is what steering controls.
    """
    def colour(label: str) -> str:
        return label.split()[0]

    return PromptSpec(spec.prompt, tuple(RelationCheck(colour(c.subject), c.relation, colour(c.object))
                                         for c in spec.checks), tag=spec.tag)


def judge(detector, image, spec: PromptSpec):
    """GenEval's verdict on one image of ``spec`` (an :class:`l2s.evaluation.ImageResult`)."""
    detections = detector.detect(image, spec.objects)
    return score_image(detections, spec.checks, rule="geneval", image_size=image.size)


def objects_found(detector, image, spec: PromptSpec) -> dict[str, bool]:
    """Object label -> whether it is detected (with its colour and shape, for the strict labels)."""
    return {label: d is not None for label, d in detector.detect(image, list(spec.objects)).items()}


def prompt_verdict(image, prompt: str) -> bool | None:
    """Whether ``image`` shows ``prompt``'s relations by the exact shapes detector and GenEval's rule
    (colour and shape); None when the prompt names no directional relation, objects that are not
    '<colour> <shape>' of the shapes world, or two objects the detector cannot tell apart
    (:func:`prompt_verdicts` says which)."""
    verdict = prompt_verdicts(image, prompt)
    return None if verdict is None else verdict.holds


def prompt_verdicts(image, prompt: str, parsed=None):
    """:func:`prompt_verdict` with each relation's verdict (an :class:`l2s.evaluation.Verdict`);
    a relation between two objects the detector cannot tell apart ("a red circle left of a red
    circle": one detection for both) has none, nor has the prompt then, with the reason. None when
    the prompt gets no verdict at all (no directional relation, objects not of the shapes world).
    ``parsed``: the relations steered instead of the parser's (``--relations``), judged instead."""
    from l2s.errors import L2SError
    from l2s.evaluation import GENEVAL, Verdict, check_scorable, indistinct_objects, spec_from_prompt

    from .detector import ShapesDetector

    spec, detector = spec_from_prompt(prompt, parsed), ShapesDetector()
    if spec is None:
        return None
    try:
        check_scorable([spec], GENEVAL, detector)   # what eval refuses to score gets no verdict here
    except L2SError:
        return None
    result = judge(detector, image, spec)
    unjudged = [indistinct_objects(check) for check in spec.checks]
    relations = tuple({"subject": c.subject, "relation": c.relation, "object": c.object,
                       "holds": None if why else c.holds, "reason": why or c.reason}
                      for c, why in zip(result.checks, unjudged))
    reason = next((why for why in unjudged if why), "")
    return Verdict(None if reason else result.correct, relations, reason)


def extra_objects(detector, image, spec: PromptSpec) -> bool:
    """Whether ``image`` shows more blobs of one of ``spec``'s object colours than the prompt names
    objects of it: the GenEval rule passes an image with a second red circle (one instance is enough),
    so a model tuned on that rule, or on a reward that never saw such an image, can learn to draw
    extra copies."""
    named: dict[str, int] = {}
    for label in spec.objects:
        colour, _ = detector.parse_label(label)
        named[colour] = named.get(colour, 0) + 1
    return any(detector.count(image, colour) > n for colour, n in named.items())


def all_objects_found(detector, image, spec: PromptSpec) -> bool:
    """Whether every object of ``spec`` is detected (with its colour and shape, for the strict labels)."""
    return all(objects_found(detector, image, spec).values())


def mode_scores(records: Sequence, specs: Sequence, detector) -> dict:
    """Strict (colour + shape) and colour-only accuracy of one mode's images, with timings."""
    from l2s.evaluation import summarise

    s = summarise([r.result for r in records], "geneval")
    seconds = [r.meta.get("generate_s") for r in records if r.meta.get("generate_s") is not None]
    cpu = [r.meta["generate_cpu_s"] for r in records if r.meta.get("generate_cpu_s") is not None]
    return {"accuracy": s.accuracy, "n_images": s.n_images, "n_correct": s.n_correct,
            "correct_by_image": {_image_key(r): bool(r.result.correct) for r in records},
            "per_relation": {r: list(v) for r, v in s.per_relation.items()},
            "generate_s_per_image": float(np.mean(seconds)) if seconds else 0.0,
            "generate_cpu_s_per_image": float(np.mean(cpu)) if cpu else None,
            **_colour_scores(records, specs, detector)}


def _image_key(record) -> str:
    """Identifies an image across modes and parts: its prompt and seed."""
    return f"{int(record.meta['prompt_index'])}/{int(record.meta['seed'])}"


def _colour_scores(records: Sequence, specs: Sequence, detector) -> dict:
    """Colour-only accuracy (:func:`colour_only`) of a mode's saved images, overall and per relation."""
    per_relation, by_image, found_by_image, extra_by_image = {}, {}, {}, {}
    for record in records:
        key = _image_key(record)
        strict_spec = specs[int(record.meta["prompt_index"])]
        spec = colour_only(strict_spec)
        with Image.open(record.image_path) as image:
            image = image.convert("RGB")
            result = judge(detector, image, spec)
            found_by_image[key] = all_objects_found(detector, image, strict_spec)
            extra_by_image[key] = extra_objects(detector, image, strict_spec)
        by_image[key] = bool(result.correct)
        for check, check_result in zip(spec.checks, result.checks):
            pair = per_relation.setdefault(check.relation, [0, 0])
            pair[0] += int(check_result.holds)
            pair[1] += 1
    correct, found, extra = sum(by_image.values()), sum(found_by_image.values()), sum(extra_by_image.values())
    return {"colour_accuracy": correct / len(records) if records else 0.0, "colour_n_correct": correct,
            "colour_correct_by_image": by_image, "colour_per_relation": per_relation,
            "objects_found": found / len(records) if records else 0.0, "objects_found_by_image": found_by_image,
            "extra_objects": extra / len(records) if records else 0.0, "extra_objects_by_image": extra_by_image}
