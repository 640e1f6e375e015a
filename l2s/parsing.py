"""Prompt parsing: find the spatial relations a prompt asks for, as (subject, relation, object).

Rule-based on ``spacy.blank("en")`` (tokenizer only, no trained model to download): a
``PhraseMatcher`` over the relation vocabulary finds every relation phrase; the text between two
relation phrases is object text.  This is deterministic, and on the benchmark templates it is more
accurate than a statistical parse (which tags "teddy bear" PROPN PROPN, reads "right of" as a noun,
and needed a substring "exceptions" table that renamed "dog" to "hot dog").

How a prompt is read:

* a leading medium phrase ("a photo of", "a 3d animation of", ...) is skipped;
* relation phrases are matched case-insensitively on whole tokens ("leftover" never matches "left"),
  the longest wins ("on the top of" over "top of", "above and to the left of" over "above");
* the gap between two relations is split into clauses at "and", ",", ";", "." ...: the first clause
  is the earlier relation's object, the last clause the next relation's subject, so a gap with no
  clause break is shared ("a frog above a sneakers below a teapot" chains through "sneakers");
* an empty subject after a clause break ("a cat left of a dog and above a ball") takes the previous
  relation's subject (the English reading: the cat is above the ball);
* a phrase drops leading determiners ("a", "the same", ...), and ends before the first word that
  starts a modifier or predicate ("is", "with", "in", "sitting", "directly", ...): "a cat is sitting
  directly above a dog in a park" gives (cat, above, dog).  Adjectives before the noun are kept.

Non-directional relations ("next to", "near", "on side of", "behind", ...) are recognised so they
delimit objects and can be reported, but they are never steered.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# spaCy is imported when a prompt is first parsed, not with this module: code that passes token
# positions itself (the GPU benchmark, a machine without spaCy) imports l2s.steer without it.
if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.matcher import Matcher, PhraseMatcher
    from spacy.tokens import Doc, Token

from l2s.errors import PromptError
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

__all__ = ["Triplet", "NonDirectional", "ParsedPrompt", "parse_prompt", "parse_cli_json"]

CharSpan = tuple[int, int]

# ---------------------------------------------------------------------------------------------
# Vocabulary (data, not code).  Multi-word entries are tokenized by the same tokenizer as the
# prompt, so "top-left of" also matches "top - left of" and "Top-Left of".
# ---------------------------------------------------------------------------------------------


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

_NON_DIRECTIONAL_LABEL = "non-directional"

# Idioms that contain a relation word but relate nothing ("over and over", "under construction").
# They are matched like relations so that, being longer, they win, and are then dropped.
IDIOMS: tuple[str, ...] = (
    "over and over", "all over", "over there", "over here", "over time", "over the years",
    "under construction", "under way", "under the weather", "under pressure", "under control",
    "left over", "left behind", "right now", "right away",
)
_IDIOM_LABEL = "idiom"

# Relation words that are also everyday adverbs ("the game is over", "a table with a cat
# underneath"): without a subject or an object they are ignored instead of being an error.
_ADVERBIAL_RELATION_WORDS = frozenset({"over", "under", "underneath", "beneath"})

# Leading "a photo of" style phrases: [article] {modifier} medium (of | showing | depicting).
_PREFIX_ARTICLES = ("a", "an", "the")
_PREFIX_MODIFIERS = (
    "realistic", "photorealistic", "hyper", "ultra", "-", "high", "quality", "detailed",
    "professional", "cinematic", "close", "up", "closeup", "digital", "oil", "watercolor",
    "watercolour", "pencil", "3d", "2d", "black", "and", "white", "vintage", "top", "down",
    "aerial", "simple", "cute", "beautiful", "sci", "fi", "movie", "stock", "colorful", "colourful",
    "hd", "4k", "8k", "studio", "cartoon", "anime", "minimalist",
)
_PREFIX_MEDIA = (
    "photo", "photograph", "picture", "image", "drawing", "painting", "illustration", "sketch",
    "render", "rendering", "animation", "view", "scene", "shot", "cartoon", "artwork", "poster",
    "snapshot", "portrait",
)
_PREFIX_LINKS = ("of", "showing", "depicting", "featuring")

# Compounds whose "and" must not split a clause ("a black and white cat").
_PROTECTED_COMPOUNDS = (
    "black and white", "salt and pepper", "fish and chips", "mac and cheese",
    "macaroni and cheese", "bread and butter", "rock and roll", "peanut butter and jelly",
    "pen and ink", "cup and saucer", "bow and arrow",
)

_DETERMINERS = frozenset({
    "a", "an", "the", "one", "some", "this", "that", "these", "those", "another", "each", "every",
    "any", "my", "your", "his", "her", "its", "our", "their", "same", "also", "then", "both",
})
_COPULAS = frozenset({"is", "are", "was", "were", "be", "being", "been"})
_EXPLETIVES = frozenset({"there", "here"})
# Words that end a noun phrase (only AFTER its first word, so "a sitting cat" stays whole).
# Copulas, post-modifying prepositions, relative words, finite verbs and degree adverbs end it:
# "a cat is on a mat", "a dog with a hat", "a cat sat", "a cat directly above".
_PHRASE_ENDERS = _COPULAS | frozenset({
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
_TRAILING_ENDERS = frozenset({
    "sitting", "standing", "lying", "laying", "hanging", "floating", "flying", "hovering",
    "perched", "placed", "located", "positioned", "situated", "resting", "mounted", "stacked",
    "seen", "shown", "depicted", "drawn", "visible", "sleeping", "jumping", "leaping", "hiding",
    "peeking", "crouching", "looming", "towering", "appearing", "leaning", "swimming", "grazing",
    "fluttering", "sinking", "rising", "suspended", "parked", "right", "far",
})
_CLAUSE_WORDS = frozenset({"and", "while", "but", "whereas", "plus", "&"})
_CLAUSE_PUNCT = frozenset({",", ";", ".", "!", "?", ":", "...", "—", "–", "--"})


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RelationPhrases:
    """Subject, relation and object as found in a prompt, each with its ``[start, end)`` character
    range in the original prompt; ``subject``/``object`` are phrases as written (article removed,
    adjectives kept)."""

    subject: str
    relation: str
    object: str
    subject_span: CharSpan
    relation_span: CharSpan
    object_span: CharSpan

    def to_dict(self) -> dict:
        """``{"subject", "relation", "object"}``: what ``l2s parse --json`` prints."""
        return {"subject": self.subject, "relation": self.relation, "object": self.object}


@dataclass(frozen=True)
class Triplet(_RelationPhrases):
    """One steerable relation: ``subject`` is ``relation`` (canonical) of ``object``."""

    def as_json_full(self) -> dict:
        """``to_dict()`` plus ``"spans"``: ``{"subject": [s, e], "relation": .., "object": ..}``."""
        return {**self.to_dict(), "spans": {"subject": list(self.subject_span),
                                            "relation": list(self.relation_span),
                                            "object": list(self.object_span)}}


@dataclass(frozen=True)
class NonDirectional(_RelationPhrases):
    """A relation without direction ("a cat next to a dog"): reported, never steered.

    ``relation`` is the phrase as written in the prompt ("next to", "on side of").
    """


@dataclass
class ParsedPrompt:
    """Everything the parser found in one prompt."""

    prompt: str
    triplets: list[Triplet] = field(default_factory=list)
    non_directional: list[NonDirectional] = field(default_factory=list)

    @property
    def steerable(self) -> bool:
        """True when the prompt has at least one directional or diagonal relation."""
        return bool(self.triplets)

    def describe(self) -> str:
        """One human-readable line saying what will be steered."""
        ignored = "; ".join(f"{r.subject} {r.relation} {r.object}" for r in self.non_directional)
        if not self.triplets:
            if ignored:
                return (f"no directional relation found (non-directional, not steered: {ignored}): "
                        "generating unsteered")
            return "no spatial relation found: generating unsteered"
        count = len(self.triplets)
        steered = "; ".join(f"{t.subject} {t.relation} {t.object}" for t in self.triplets)
        line = f"steering {count} relation{'s' if count > 1 else ''}: {steered}"
        return f"{line} (not steered: {ignored})" if ignored else line


# ---------------------------------------------------------------------------------------------
# spaCy machinery, built once per process
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Matchers:
    nlp: Language
    relations: PhraseMatcher      # label: canonical relation or _NON_DIRECTIONAL_LABEL
    protected: PhraseMatcher      # compounds whose "and" is not a clause break
    prefix: Matcher               # leading "a photo of"


@functools.lru_cache(maxsize=1)
def _matchers() -> _Matchers:
    import spacy
    from spacy.matcher import Matcher, PhraseMatcher

    nlp = spacy.blank("en")
    # The default English tokenizer leaves "cat;and" whole; a ";" always separates clauses here.
    infixes = list(nlp.Defaults.infixes) + [r";"]
    nlp.tokenizer.infix_finditer = spacy.util.compile_infix_regex(infixes).finditer

    relations = PhraseMatcher(nlp.vocab, attr="LOWER")
    for relation, phrases in RELATION_PHRASES.items():
        relations.add(relation, [nlp.make_doc(p) for p in phrases])
    relations.add(_NON_DIRECTIONAL_LABEL, [nlp.make_doc(p) for p in NON_DIRECTIONAL_PHRASES])
    relations.add(_IDIOM_LABEL, [nlp.make_doc(p) for p in IDIOMS])

    protected = PhraseMatcher(nlp.vocab, attr="LOWER")
    protected.add("compound", [nlp.make_doc(p) for p in _PROTECTED_COMPOUNDS])

    prefix = Matcher(nlp.vocab)
    prefix.add("prefix", [[
        {"LOWER": {"IN": list(_PREFIX_ARTICLES)}, "OP": "?"},
        {"LOWER": {"IN": list(_PREFIX_MODIFIERS)}, "OP": "*"},
        {"LOWER": {"IN": list(_PREFIX_MEDIA)}},
        {"LOWER": {"IN": list(_PREFIX_LINKS)}},
    ]])
    return _Matchers(nlp, relations, protected, prefix)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phrase:
    text: str
    span: CharSpan


class _Words:
    """The prompt's tokens without whitespace tokens, with their offsets in the original prompt.

    spaCy keeps runs of extra whitespace ("left\nof", "teddy  bear") as tokens of their own, which
    would stop the matchers; matching on a whitespace-free Doc and mapping back keeps spans exact.
    """

    def __init__(self, prompt: str, nlp: Language):
        from spacy.tokens import Doc

        kept = [t for t in nlp.make_doc(prompt) if not t.is_space]
        self.prompt = prompt
        self.doc = Doc(nlp.vocab, words=[t.text for t in kept], spaces=[True] * len(kept))
        self.starts = [t.idx for t in kept]

    def char_span(self, start: int, end: int) -> CharSpan:
        """Character ``[start, end)`` in the prompt of the tokens ``doc[start:end]``."""
        return self.starts[start], self.starts[end - 1] + len(self.doc[end - 1].text)

    def text(self, start: int, end: int) -> str:
        first, last = self.char_span(start, end)
        return self.prompt[first:last]


def _prefix_end(words: _Words, matchers: _Matchers) -> int:
    """Token index where the prompt proper starts (after a leading "a photo of")."""
    return max((end for _, start, end in matchers.prefix(words.doc) if start == 0), default=0)


def _is_clause_break(token: Token, protected: set[int]) -> bool:
    if token.i in protected:
        return False
    return token.lower_ in _CLAUSE_WORDS or token.text in _CLAUSE_PUNCT


def _clauses(doc: Doc, start: int, end: int, protected: set[int]) -> list[list[Token]]:
    """Tokens of ``doc[start:end]`` split at clause breaks (at least one clause, maybe empty)."""
    clauses: list[list[Token]] = [[]]
    for token in doc[start:end]:
        if _is_clause_break(token, protected):
            clauses.append([])
        else:
            clauses[-1].append(token)
    return clauses


def _ends_phrase(tokens: list[Token], k: int) -> bool:
    """Whether ``tokens[k]`` starts what follows a noun phrase rather than continuing it."""
    word = tokens[k].lower_
    if word in _PHRASE_ENDERS:
        return True
    return word in _TRAILING_ENDERS and all(
        t.lower_ in _PHRASE_ENDERS or t.lower_ in _TRAILING_ENDERS for t in tokens[k + 1:k + 2])


def _noun_phrase(tokens: list[Token], words: _Words) -> _Phrase | None:
    """The object phrase in one clause, or None when the clause names nothing."""
    tokens = list(tokens)
    # Leading determiners, "the same", and "there is" / "is" before the phrase.
    while tokens:
        word = tokens[0].lower_
        if word in _DETERMINERS or word in _COPULAS or tokens[0].is_punct:
            tokens.pop(0)
        elif word in _EXPLETIVES and len(tokens) > 1 and tokens[1].lower_ in _COPULAS:
            del tokens[:2]
        else:
            break
    # The phrase ends before the first modifier/predicate word after its first word.
    for k in range(1, len(tokens)):
        if _ends_phrase(tokens, k):
            tokens = tokens[:k]
            break
    while tokens and tokens[-1].is_punct:
        tokens.pop()
    if not tokens:
        return None
    start, end = tokens[0].i, tokens[-1].i + 1
    return _Phrase(words.text(start, end), words.char_span(start, end))


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Extract every spatial relation of ``prompt``, in order of appearance.

    Directional and diagonal relations become ``Triplet``s (canonical relation names); "next to",
    "near" and the like become ``NonDirectional`` entries.  A prompt with no relation parses to an
    empty, non-steerable result.

    Raises ``PromptError`` when the prompt is empty or a directional relation lacks its subject
    ("left of a dog") or its object ("a cat above").
    """
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError("prompt is empty")
    words = _Words(prompt, _matchers().nlp)
    doc, (begin, relation_spans, protected) = words.doc, _relation_spans(words)
    result = ParsedPrompt(prompt)
    previous_subject: _Phrase | None = None
    for k, rel in enumerate(relation_spans):
        steerable = rel.label_ != _NON_DIRECTIONAL_LABEL
        written, rel_span = words.text(rel.start, rel.end), words.char_span(rel.start, rel.end)
        before = _clauses(doc, relation_spans[k - 1].end if k else begin, rel.start, protected)
        subject = _subject(before, words, previous_subject if k and steerable else None, first=k == 0)
        gap_end = relation_spans[k + 1].start if k + 1 < len(relation_spans) else len(doc)
        obj = _noun_phrase(_clauses(doc, rel.end, gap_end, protected)[0], words)
        if subject is None or obj is None:
            if steerable and rel.text.lower() not in _ADVERBIAL_RELATION_WORDS:
                raise _missing_argument(written, rel_span, "subject" if subject is None else "object")
            # A dangling adverb or non-directional word ("a cat jumping over"): nothing to report.
            previous_subject = subject
            continue
        if steerable:
            result.triplets.append(Triplet(subject.text, rel.label_, obj.text,
                                           subject.span, rel_span, obj.span))
        else:
            result.non_directional.append(NonDirectional(subject.text, written, obj.text,
                                                         subject.span, rel_span, obj.span))
        previous_subject = subject
    return result


def _relation_spans(words: _Words):
    """(where relations may start, the relation word spans in order, protected token indices)."""
    from spacy.tokens import Span
    from spacy.util import filter_spans

    matchers, doc = _matchers(), words.doc
    begin = _prefix_end(words, matchers)
    found = [Span(doc, start, end, label=label)
             for label, start, end in matchers.relations(doc) if start >= begin]
    # Longest non-overlapping matches, in order; an idiom wins over the relation word inside it.
    spans = [s for s in filter_spans(found) if s.label_ != _IDIOM_LABEL]
    protected = {i for _, start, end in matchers.protected(doc) for i in range(start, end)}
    return begin, spans, protected


def _subject(before: list, words: _Words, coordinated: _Phrase | None, first: bool) -> _Phrase | None:
    """The subject of a relation from the clauses ``before`` it (see :func:`parse_prompt`)."""
    if first:
        # Nothing to coordinate with: take the last clause that names something.
        return next((p for p in (_noun_phrase(c, words) for c in reversed(before)) if p is not None), None)
    subject = _noun_phrase(before[-1], words)
    if subject is None and len(before) > 1:
        # "a cat left of a dog and above a ball": the cat is also above the ball.
        subject = coordinated
    return subject


def _missing_argument(written: str, rel_span: tuple[int, int], missing: str) -> PromptError:
    where = "before" if missing == "subject" else "after"
    one_line = " ".join(written.split())
    return PromptError(f"relation {one_line!r} at character {rel_span[0]} has no {missing} {where} "
                       f"it (write e.g. 'a cat {one_line.lower()} a dog')")


def parse_cli_json(prompt: str) -> list[dict]:
    """What ``l2s parse --json`` prints: ``[{"subject", "relation", "object"}, ...]``."""
    return [t.to_dict() for t in parse_prompt(prompt).triplets]
