"""The relation vocabulary: canonical names, classifier class names and their aliases.

Canonical relations are what the parser emits; class names are what a classifier was
trained on (the published checkpoints use "to the left of" etc.).  ``class_index`` is the
one place that maps between them.
"""
from __future__ import annotations

import difflib

from l2s.errors import UnsupportedRelationError

LEFT_OF, RIGHT_OF, ABOVE, BELOW = "left of", "right of", "above", "below"
TOP_LEFT_OF, TOP_RIGHT_OF = "top-left of", "top-right of"
BOTTOM_LEFT_OF, BOTTOM_RIGHT_OF = "bottom-left of", "bottom-right of"

DIRECTIONAL = (LEFT_OF, RIGHT_OF, ABOVE, BELOW)
DIAGONAL = (TOP_LEFT_OF, TOP_RIGHT_OF, BOTTOM_LEFT_OF, BOTTOM_RIGHT_OF)
CANONICAL = DIRECTIONAL + DIAGONAL

# Relations people write that say nothing about direction: reported, never steered.
NON_DIRECTIONAL = ("next to", "near", "on side of", "beside", "by")

# The neutral training class (object-attribute pairs); never a steering target.
NEUTRAL = "is"

# Class names of the published 5-class checkpoints, in their (alphabetical) index order.
PUBLISHED_CLASSES = ("above", "below", "is", "to the left of", "to the right of")
# Our diagonal classifier's classes, alphabetical like the published ones.
DIAGONAL_CLASSES = ("bottom-left of", "bottom-right of", "is", "top-left of", "top-right of")

# Every spelling a checkpoint may use for a class, mapped to the canonical relation.
_CLASS_ALIASES = {
    "to the left of": LEFT_OF, "left of": LEFT_OF, "left": LEFT_OF,
    "to the right of": RIGHT_OF, "right of": RIGHT_OF, "right": RIGHT_OF,
    "above": ABOVE, "below": BELOW,
    "top-left of": TOP_LEFT_OF, "above_left": TOP_LEFT_OF, "above-to the left of": TOP_LEFT_OF,
    "top-right of": TOP_RIGHT_OF, "above_right": TOP_RIGHT_OF, "above-to the right of": TOP_RIGHT_OF,
    "bottom-left of": BOTTOM_LEFT_OF, "below_left": BOTTOM_LEFT_OF, "below-to the left of": BOTTOM_LEFT_OF,
    "bottom-right of": BOTTOM_RIGHT_OF, "below_right": BOTTOM_RIGHT_OF,
    "below-to the right of": BOTTOM_RIGHT_OF,
    "is": NEUTRAL,
}

# Wrong-relation words used for training prompts (canonical relation -> prompt phrase).
PROMPT_PHRASE = {
    LEFT_OF: "to the left of", RIGHT_OF: "to the right of", ABOVE: "above", BELOW: "below",
    TOP_LEFT_OF: "top-left of", TOP_RIGHT_OF: "top-right of",
    BOTTOM_LEFT_OF: "bottom-left of", BOTTOM_RIGHT_OF: "bottom-right of", NEUTRAL: "is",
}


def canonical_class(name: str) -> str:
    """Canonical relation (or ``"is"``) for a class name as stored in a checkpoint."""
    key = name.strip().lower()
    if key not in _CLASS_ALIASES:
        close = difflib.get_close_matches(key, list(_CLASS_ALIASES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(CANONICAL + (NEUTRAL,))})"
        raise UnsupportedRelationError(f"unknown relation class name {name!r}{hint}")
    return _CLASS_ALIASES[key]


def class_index(relation: str, class_names: tuple[str, ...] | list[str]) -> int:
    """Index of canonical ``relation`` among a classifier's ``class_names``.

    Raises ``UnsupportedRelationError`` (never returns -1) when the classifier has no such class,
    e.g. a diagonal relation with the 4-direction classifier.
    """
    wanted = canonical_class(relation)
    for i, name in enumerate(class_names):
        if canonical_class(name) == wanted:
            return i
    raise UnsupportedRelationError(
        f"relation {relation!r} is not a class of this classifier (classes: {', '.join(class_names)})")
