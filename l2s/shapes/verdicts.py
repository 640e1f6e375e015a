"""How a shapes-world image is judged: strictly (colour and shape), on colours alone, and whether
every object was drawn at all."""
from __future__ import annotations

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


def image_verdicts(detector, image, spec: PromptSpec) -> dict[str, bool]:
    """One image's :data:`VERDICTS`: the GenEval rule on colour and shape (strict), the rule on the
    colour blobs alone, and whether every object was found in its colour and shape."""
    return {"strict": judge(detector, image, spec).correct,
            "colour": judge(detector, image, colour_only(spec)).correct,
            "found": all_objects_found(detector, image, spec)}


def objects_found(detector, image, spec: PromptSpec) -> dict[str, bool]:
    """Object label -> whether it is detected (with its colour and shape, for the strict labels)."""
    return {label: d is not None for label, d in detector.detect(image, list(spec.objects)).items()}


def prompt_verdict(image, prompt: str) -> bool | None:
    """Whether ``image`` shows ``prompt``'s relations by the exact shapes detector and GenEval's rule
    (colour and shape); None when the prompt names no directional relation, or objects that are not
    '<colour> <shape>' of the shapes world."""
    from l2s.errors import L2SError
    from l2s.evaluation import GENEVAL, check_scorable, spec_from_prompt

    from .detector import ShapesDetector

    spec, detector = spec_from_prompt(prompt), ShapesDetector()
    if spec is None:
        return None
    try:
        check_scorable([spec], GENEVAL, detector)   # what eval refuses to score gets no verdict here
    except L2SError:
        return None
    return judge(detector, image, spec).correct


def all_objects_found(detector, image, spec: PromptSpec) -> bool:
    """Whether every object of ``spec`` is detected (with its colour and shape, for the strict labels)."""
    return all(objects_found(detector, image, spec).values())
