"""The parser's vocabulary (data, not code): relation phrases, idioms, prefixes and the words that
end a noun phrase.  Multi-word entries are tokenized by the same tokenizer as the prompt, so
"top-left of" also matches "top - left of" and "Top-Left of"."""
from __future__ import annotations

from l2s.relations import (
    ABOVE,
    BELOW,
    BOTTOM_LEFT_OF,
    BOTTOM_RIGHT_OF,
    LEFT_OF,
    NON_DIRECTIONAL,
    RIGHT_OF,
    TOP_LEFT_OF,
    TOP_RIGHT_OF,
)

def _horizontal_phrases(side: str) -> tuple[str, ...]:
    """Surface forms of "left of" / "right of" (GenEval, T2I-CompBench and plain English)."""
    cores = (f"{side} of", f"{side} side of", f"{side}-hand side of", f"{side} hand side of")
    preps = ("", "to the ", "on the ", "at the ", "to ", "on ")
    return tuple(prep + core for core in cores for prep in preps)


_VERTICAL_NOUNS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
_VERTICAL_PREPS = {"top": "above", "bottom": "below"}


def _diagonal_phrases(vertical: str, side: str) -> tuple[str, ...]:
    """Surface forms of one diagonal, e.g. vertical="top", side="left" -> "top-left of"."""
    phrases: list[str] = []
    prep = _VERTICAL_PREPS[vertical]
    for word in _VERTICAL_NOUNS[vertical]:
        for joint in ("-", " "):
            core = f"{word}{joint}{side} of"
            phrases += [core, f"to the {core}", f"on the {core}", f"at the {core}",
                        f"in the {core}"]
            phrases += [f"{word}{joint}{side} side of", f"on the {word}{joint}{side} side of"]
    for joint in ("-", " "):
        phrases.append(f"{prep}{joint}{side} of")                       # "above-left of"
    phrases += [
        f"{prep} and to the {side} of", f"{prep} and {side} of",      # "above and to the left of"
        f"{prep} and on the {side} of",
        f"{prep}-to the {side} of",                                    # the published spelling
        f"{prep} and to {side} of",
        f"to the {side} of and {prep}", f"{side} of and {prep}",      # "to the left of and above"
        f"on the {side} of and {prep}",
    ]
    return tuple(phrases)


RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    LEFT_OF: _horizontal_phrases("left"),
    RIGHT_OF: _horizontal_phrases("right"),
    ABOVE: ("above", "over", "atop", "on top of", "on the top of", "at the top of"),
    BELOW: ("below", "under", "beneath", "underneath", "on the bottom of", "on bottom of",
            "at the bottom of", "underneath of"),
    TOP_LEFT_OF: _diagonal_phrases("top", "left"),
    TOP_RIGHT_OF: _diagonal_phrases("top", "right"),
    BOTTOM_LEFT_OF: _diagonal_phrases("bottom", "left"),
    BOTTOM_RIGHT_OF: _diagonal_phrases("bottom", "right"),
}
"""Canonical relation -> every surface phrase that means it."""

NON_DIRECTIONAL_PHRASES: tuple[str, ...] = tuple(dict.fromkeys(
    NON_DIRECTIONAL + ("on the side of", "at the side of", "by the side of", "close to",
                       "adjacent to", "alongside", "in front of", "behind")))
"""Relations that are recognised (they delimit objects) and reported, never steered.  Depth
("in front of", "behind") is here too: the classifiers only know the image plane."""

NON_DIRECTIONAL_LABEL = "non-directional"

# Idioms that contain a relation word but relate nothing ("over and over", "under construction").
# They are matched like relations so that, being longer, they win, and are then dropped.
IDIOMS: tuple[str, ...] = (
    "over and over", "all over", "over there", "over here", "over time", "over the years",
    "under construction", "under way", "under the weather", "under pressure", "under control",
    "left over", "left behind", "right now", "right away",
)
IDIOM_LABEL = "idiom"

# Relation words that are also everyday adverbs ("the game is over", "a table with a cat
# underneath"): without a subject or an object they are ignored instead of being an error.
ADVERBIAL_RELATION_WORDS = frozenset({"over", "under", "underneath", "beneath"})

# Leading "a photo of" style phrases: [article] {modifier} medium (of | showing | depicting).
PREFIX_ARTICLES = ("a", "an", "the")
PREFIX_MODIFIERS = (
    "realistic", "photorealistic", "hyper", "ultra", "-", "high", "quality", "detailed",
    "professional", "cinematic", "close", "up", "closeup", "digital", "oil", "watercolor",
    "watercolour", "pencil", "3d", "2d", "black", "and", "white", "vintage", "top", "down",
    "aerial", "simple", "cute", "beautiful", "sci", "fi", "movie", "stock", "colorful", "colourful",
    "hd", "4k", "8k", "studio", "cartoon", "anime", "minimalist",
)
PREFIX_MEDIA = (
    "photo", "photograph", "picture", "image", "drawing", "painting", "illustration", "sketch",
    "render", "rendering", "animation", "view", "scene", "shot", "cartoon", "artwork", "poster",
    "snapshot", "portrait",
)
PREFIX_LINKS = ("of", "showing", "depicting", "featuring")
# What a comma-listed "a ..." names when it is the prompt's style, not one more object ("..., a masterpiece").
STYLE_NOUNS = frozenset({*PREFIX_MEDIA, "masterpiece", "wallpaper", "art", "style", "quality", "resolution"})

# Compounds whose "and" must not split a clause ("a black and white cat").
PROTECTED_COMPOUNDS = (
    "black and white", "salt and pepper", "fish and chips", "mac and cheese",
    "macaroni and cheese", "bread and butter", "rock and roll", "peanut butter and jelly",
    "pen and ink", "cup and saucer", "bow and arrow",
)

DETERMINERS = frozenset({
    "a", "an", "the", "one", "some", "this", "that", "these", "those", "another", "each", "every",
    "any", "my", "your", "his", "her", "its", "our", "their", "same", "also", "then", "both",
})
COPULAS = frozenset({"is", "are", "was", "were", "be", "being", "been"})
EXPLETIVES = frozenset({"there", "here"})
# Words that end a noun phrase (only AFTER its first word, so "a sitting cat" stays whole).
# Copulas, post-modifying prepositions, relative words, finite verbs and degree adverbs end it:
# "a cat is on a mat", "a dog with a hat", "a cat sat", "a cat directly above".
PHRASE_ENDERS = COPULAS | frozenset({
    "with", "in", "on", "at", "inside", "within", "from", "for", "during", "against", "into",
    "onto", "across", "along", "around", "through", "toward", "towards", "among", "between",
    "wearing", "holding", "carrying", "made", "that", "which", "who", "whose", "where", "when",
    "as", "because", "after", "before", "until", "since", "(",
    "sits", "hangs", "hovers", "appears", "lies", "stands", "sat", "lay", "stood", "hung",
    "floated", "rested", "leaned", "flew", "swam", "grazed", "fluttered", "snuggled", "sank",
    "peeked", "hid", "crouched", "loomed", "towered", "hovered",
    "directly", "just", "slightly", "diagonally", "exactly", "immediately", "somewhere", "partly",
    "partially", "also",
})
# Participles and adverbs that may also modify a following noun ("a silver flying saucer", "a
# green hanging plant"): they end the phrase only when nothing but other enders follows them
# ("a cat sitting", "a lamp hanging directly", "a dog sleeping on a mat").
TRAILING_ENDERS = frozenset({
    "sitting", "standing", "lying", "laying", "hanging", "floating", "flying", "hovering",
    "perched", "placed", "located", "positioned", "situated", "resting", "mounted", "stacked",
    "seen", "shown", "depicted", "drawn", "visible", "sleeping", "jumping", "leaping", "hiding",
    "peeking", "crouching", "looming", "towering", "appearing", "leaning", "swimming", "grazing",
    "fluttering", "sinking", "rising", "suspended", "parked", "right", "far",
})
CLAUSE_WORDS = frozenset({"and", "while", "but", "whereas", "plus", "&"})
# Clause words that may join two objects into one ("a cat and a dog left of a tree").
COORDINATORS = frozenset({"and", "plus", "&"})
# A comma lists one more object only before one of these ("a cat, a dog left of a tree"): a comma
# also starts the style words many prompts end with ("a cat left of a dog, digital art, 4k").
LIST_COMMA = ","
LIST_ARTICLES = frozenset({"a", "an", "the", "another", "one", "two", "three", "four", "five", "six", "seven",
                           "eight", "nine", "ten"})
CLAUSE_PUNCT = frozenset({",", ";", ".", "!", "?", ":", "...", "—", "–", "--"})
