"""Words, clauses and noun phrases of a prompt: the pieces the parser assembles into relations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .matchers import Matchers
from .results import CharSpan
from .vocabulary import (
    CLAUSE_PUNCT,
    CLAUSE_WORDS,
    COPULAS,
    DETERMINERS,
    EXPLETIVES,
    PHRASE_ENDERS,
    TRAILING_ENDERS,
)

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token


@dataclass(frozen=True)
class Phrase:
    text: str
    span: CharSpan


class Words:
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


def prefix_end(words: Words, matchers: Matchers) -> int:
    """Token index where the prompt proper starts (after a leading "a photo of")."""
    return max((end for _, start, end in matchers.prefix(words.doc) if start == 0), default=0)


def _is_clause_break(token: Token, protected: set[int]) -> bool:
    if token.i in protected:
        return False
    return token.lower_ in CLAUSE_WORDS or token.text in CLAUSE_PUNCT


def clauses(doc: Doc, start: int, end: int, protected: set[int]) -> list[list[Token]]:
    """Tokens of ``doc[start:end]`` split at clause breaks (at least one clause, maybe empty)."""
    clauses: list[list[Token]] = [[]]
    for token in doc[start:end]:
        if _is_clause_break(token, protected):
            clauses.append([])
        else:
            clauses[-1].append(token)
    return clauses


def clause_breaks(doc: Doc, start: int, end: int, protected: set[int]) -> list[Token]:
    """The tokens :func:`clauses` splits ``doc[start:end]`` at: the k-th ends the k-th clause."""
    return [token for token in doc[start:end] if _is_clause_break(token, protected)]


def is_whole_phrase(tokens: list[Token], phrase: Phrase, words: Words) -> bool:
    """Whether ``phrase`` (the clause's :func:`noun_phrase`) runs to the clause's last word: the
    clause names a thing and says nothing more ("a bird", not "a bird is flying")."""
    last = next((t for t in reversed(tokens) if not t.is_punct), None)
    return last is not None and words.char_span(last.i, last.i + 1)[1] == phrase.span[1]


def _ends_phrase(tokens: list[Token], k: int) -> bool:
    """Whether ``tokens[k]`` starts what follows a noun phrase rather than continuing it."""
    word = tokens[k].lower_
    if word in PHRASE_ENDERS:
        return True
    return word in TRAILING_ENDERS and all(
        t.lower_ in PHRASE_ENDERS or t.lower_ in TRAILING_ENDERS for t in tokens[k + 1:k + 2])


def noun_phrase(tokens: list[Token], words: Words) -> Phrase | None:
    """The object phrase in one clause, or None when the clause names nothing."""
    tokens = list(tokens)
    # Leading determiners, "the same", and "there is" / "is" before the phrase.
    while tokens:
        word = tokens[0].lower_
        if word in DETERMINERS or word in COPULAS or tokens[0].is_punct:
            tokens.pop(0)
        elif word in EXPLETIVES and len(tokens) > 1 and tokens[1].lower_ in COPULAS:
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
    return Phrase(words.text(start, end), words.char_span(start, end))
