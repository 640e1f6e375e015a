"""One shapes-world image's verdicts, the three the research scripts tabulate
(``shapes_found_rate.py``, ``shapes_step_size.py``, ``shapes_leakage_steering.py``; was
``l2s.shapes.image_verdicts``, which nothing in the package used)."""
from __future__ import annotations

from l2s.evaluation import PromptSpec
from l2s.shapes.verdicts import all_objects_found, colour_only, judge


def image_verdicts(detector, image, spec: PromptSpec) -> dict[str, bool]:
    """One image's :data:`l2s.shapes.VERDICTS`: the GenEval rule on colour and shape (strict), the
    rule on the colour blobs alone, and whether every object was found in its colour and shape."""
    return {"strict": judge(detector, image, spec).correct,
            "colour": judge(detector, image, colour_only(spec)).correct,
            "found": all_objects_found(detector, image, spec)}
