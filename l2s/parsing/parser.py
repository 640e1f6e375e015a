"""``parse_prompt``: the relations of a prompt, in order (see the package docstring for how)."""
from __future__ import annotations

from l2s.errors import PromptError
from .matchers import spacy_matchers
from .phrases import Phrase, Words, clause_breaks, clauses, is_whole_phrase, noun_phrase, prefix_end
from .results import Coordinated, NonDirectional, ParsedPrompt, Triplet
from .vocabulary import (ADVERBIAL_RELATION_WORDS, COORDINATORS, IDIOM_LABEL, LIST_ARTICLES, LIST_COMMA,
                         NON_DIRECTIONAL_LABEL, STYLE_NOUNS)


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Extract every spatial relation of ``prompt``, in order of appearance.

    Directional and diagonal relations become ``Triplet``s (canonical relation names); "next to",
    "near" and the like become ``NonDirectional`` entries.  A prompt with no relation parses to an
    empty, non-steerable result.

    Raises ``PromptError`` when the prompt is empty or a directional relation lacks its subject
    ("left of a dog") or its object ("a cat above").
    """
    check_prompt_text(prompt)
    if not prompt.strip():
        raise PromptError("prompt is empty")
    words = Words(prompt, spacy_matchers().nlp)
    doc, (begin, relation_spans, protected) = words.doc, _relation_spans(words)
    result = ParsedPrompt(prompt)
    previous_subject: Phrase | None = None
    for k, rel in enumerate(relation_spans):
        steerable = rel.label_ != NON_DIRECTIONAL_LABEL
        written, rel_span = words.text(rel.start, rel.end), words.char_span(rel.start, rel.end)
        before_gap = (relation_spans[k - 1].end if k else begin, rel.start)
        before = clauses(doc, *before_gap, protected)
        subject = _subject(before, words, previous_subject if k and steerable else None, first=k == 0)
        after_gap = (rel.end, relation_spans[k + 1].start if k + 1 < len(relation_spans) else len(doc))
        after = clauses(doc, *after_gap, protected)
        obj = noun_phrase(after[0], words)
        if subject is None or obj is None:
            if steerable and rel.text.lower() not in ADVERBIAL_RELATION_WORDS:
                raise _missing_argument(written, rel_span, "subject" if subject is None else "object")
            # A dangling adverb or non-directional word ("a cat jumping over"): nothing to report.
            previous_subject = subject
            continue
        if steerable:
            triplet = Triplet(subject.text, rel.label_, obj.text, subject.span, rel_span, obj.span)
            result.triplets.append(triplet)
            # Clause 0 before (after the first relation) and the last clause after (before another) are used.
            last_used = len(after) - 1 if k + 1 < len(relation_spans) else len(after)
            result.coordinated += (
                _coordinated(triplet, before, clause_breaks(doc, *before_gap, protected), subject, -1,
                             0 if k else -1, words)
                + _coordinated(triplet, after, clause_breaks(doc, *after_gap, protected), obj, 1, last_used, words))
        else:
            result.non_directional.append(NonDirectional(subject.text, written, obj.text,
                                                         subject.span, rel_span, obj.span))
        previous_subject = subject
    # An object between two relations is joined to both: named once, in the order of the prompt.
    result.coordinated = sorted({c.span: c for c in reversed(result.coordinated)}.values(), key=lambda c: c.span)
    return result


def check_prompt_text(prompt) -> None:
    """Raise ``PromptError`` unless ``prompt`` is a string of text (UTF-8 encodable)."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:   # undecodable bytes of argv arrive as lone surrogates
        raise PromptError("the prompt is not UTF-8 text") from None


def _relation_spans(words: Words):
    """(where relations may start, the relation word spans in order, protected token indices)."""
    from spacy.tokens import Span
    from spacy.util import filter_spans

    matchers, doc = spacy_matchers(), words.doc
    begin = prefix_end(words, matchers)
    found = [Span(doc, start, end, label=label)
             for label, start, end in matchers.relations(doc) if start >= begin]
    # Longest non-overlapping matches, in order; an idiom wins over the relation word inside it.
    spans = [s for s in filter_spans(found) if s.label_ != IDIOM_LABEL]
    protected = {i for _, start, end in matchers.protected(doc) for i in range(start, end)}
    return begin, spans, protected


def _subject(before: list, words: Words, coordinated: Phrase | None, first: bool) -> Phrase | None:
    """The subject of a relation from the clauses ``before`` it (see :func:`parse_prompt`)."""
    if first:
        # Nothing to coordinate with: take the last clause that names something.
        return next((p for p in (noun_phrase(c, words) for c in reversed(before)) if p is not None), None)
    subject = noun_phrase(before[-1], words)
    if subject is None and len(before) > 1:
        # "a cat left of a dog and above a ball": the cat is also above the ball.
        subject = coordinated
    return subject


def _coordinated(triplet: Triplet, gap: list, breaks: list, used: Phrase, step: int, stop: int,
                 words: Words) -> list[Coordinated]:
    """Objects of ``gap`` joined by "and" or listed by a comma (:func:`_joins`) to the clause of ``used``
    (walking by ``step`` up to clause ``stop``, which another relation uses), each a whole clause naming
    a thing: "a cat and a dog left of a tree" and "a cat, a dog left of a tree" join "cat" to the
    subject; "and a bird is flying" is a clause of its own."""
    at = next((i for i, c in enumerate(gap) if (p := noun_phrase(c, words)) and p.span == used.span), None)
    found: list[Coordinated] = []
    k = stop if at is None else at + step
    while k != stop and 0 <= k < len(gap):
        if _serial_comma(gap, breaks, k):
            k += step
            continue
        word, phrase = breaks[min(k, k - step)], noun_phrase(gap[k], words)   # the break between k and k - step
        if not _joins(word, gap[k]) or phrase is None or not is_whole_phrase(gap[k], phrase, words):
            break
        found.append(Coordinated(phrase.text, phrase.span, used.text, word.text, triplet))
        k += step
    return found


def _joins(word, clause: list) -> bool:
    """Whether the clause break ``word`` lists ``clause`` as one more object: "and" always, a comma
    only before an article ("a cat, a dog"), not before a prompt's trailing style words ("..., digital art",
    "..., a masterpiece")."""
    if word.lower_ in COORDINATORS:
        return True
    return (word.text == LIST_COMMA and bool(clause) and clause[0].lower_ in LIST_ARTICLES
            and clause[-1].lower_ not in STYLE_NOUNS)


def _serial_comma(gap: list, breaks: list, k: int) -> bool:
    """Whether clause ``k`` is the empty one inside ", and" (a list's last comma: "a cat, a dog, and a
    bird"): one break, walked over."""
    return (not gap[k] and 0 < k < len(gap) - 1 and breaks[k - 1].text == LIST_COMMA
            and breaks[k].lower_ in COORDINATORS)


def _missing_argument(written: str, rel_span: tuple[int, int], missing: str) -> PromptError:
    where = "before" if missing == "subject" else "after"
    one_line = " ".join(written.split())
    return PromptError(f"relation {one_line!r} at character {rel_span[0]} has no {missing} {where} "
                       f"it (write e.g. 'a cat {one_line.lower()} a dog')")


def parse_cli_json(prompt: str) -> list[dict]:
    """What ``l2s parse --json`` prints: ``[{"subject", "relation", "object"}, ...]``."""
    return parse_prompt(prompt).triplet_dicts()
