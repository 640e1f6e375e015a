"""The spaCy machinery, built once per process: a blank English tokenizer and the matchers over the
vocabulary.  spaCy is imported when a prompt is first parsed, not with this package: code that
passes token positions itself (the GPU benchmark, a machine without spaCy) imports l2s.steer
without it."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .vocabulary import (
    IDIOM_LABEL,
    IDIOMS,
    NON_DIRECTIONAL_LABEL,
    NON_DIRECTIONAL_PHRASES,
    PREFIX_ARTICLES,
    PREFIX_LINKS,
    PREFIX_MEDIA,
    PREFIX_MODIFIERS,
    PROTECTED_COMPOUNDS,
    RELATION_PHRASES,
)

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.matcher import Matcher, PhraseMatcher


@dataclass(frozen=True)
class Matchers:
    nlp: Language
    relations: PhraseMatcher      # label: canonical relation or NON_DIRECTIONAL_LABEL
    protected: PhraseMatcher      # compounds whose "and" is not a clause break
    prefix: Matcher               # leading "a photo of"


@functools.lru_cache(maxsize=1)
def spacy_matchers() -> Matchers:
    import spacy
    from spacy.matcher import Matcher, PhraseMatcher

    nlp = spacy.blank("en")
    # The default English tokenizer leaves "cat;and" whole; a ";" always separates clauses here.
    infixes = list(nlp.Defaults.infixes) + [r";"]
    nlp.tokenizer.infix_finditer = spacy.util.compile_infix_regex(infixes).finditer

    relations = PhraseMatcher(nlp.vocab, attr="LOWER")
    for relation, phrases in RELATION_PHRASES.items():
        relations.add(relation, [nlp.make_doc(p) for p in phrases])
    relations.add(NON_DIRECTIONAL_LABEL, [nlp.make_doc(p) for p in NON_DIRECTIONAL_PHRASES])
    relations.add(IDIOM_LABEL, [nlp.make_doc(p) for p in IDIOMS])

    protected = PhraseMatcher(nlp.vocab, attr="LOWER")
    protected.add("compound", [nlp.make_doc(p) for p in PROTECTED_COMPOUNDS])

    prefix = Matcher(nlp.vocab)
    prefix.add("prefix", [[
        {"LOWER": {"IN": list(PREFIX_ARTICLES)}, "OP": "?"},
        {"LOWER": {"IN": list(PREFIX_MODIFIERS)}, "OP": "*"},
        {"LOWER": {"IN": list(PREFIX_MEDIA)}},
        {"LOWER": {"IN": list(PREFIX_LINKS)}},
    ]])
    return Matchers(nlp, relations, protected, prefix)
