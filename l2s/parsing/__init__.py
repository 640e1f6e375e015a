"""Prompt parsing: find the spatial relations a prompt asks for, as (subject, relation, object).

Rule-based on ``spacy.blank("en")`` (tokenizer only, no trained model to download): a
``PhraseMatcher`` over the relation vocabulary finds every relation phrase; the text between two
relation phrases is object text. Deterministic, and independent of a statistical tagger's
reading of multi-word objects ("teddy bear") or relation phrases ("right of").

How a prompt is read:

* a leading medium phrase ("a photo of", "a 3d animation of", ...) is skipped;
* relation phrases are matched case-insensitively on whole tokens ("leftover" never matches "left"),
  the longest wins ("on the top of" over "top of", "above and to the left of" over "above");
* the gap between two relations is split into clauses at "and", ",", ";", "." ...: the first clause
  is the earlier relation's object, the last clause the next relation's subject, so a gap with no
  clause break is shared ("a frog above a sneakers below a teapot" chains through "sneakers");
* an empty subject after a clause break ("a cat left of a dog and above a ball") takes the previous
  relation's subject (the English reading: the cat is above the ball);
* an object joined by "and" to a relation's subject or object ("a cat and a dog left of a tree"), or
  listed by a comma before an article ("a cat, a dog left of a tree"; not "..., digital art"), is
  in no relation (a plain list may mean either reading): it is recorded in ``coordinated`` and named
  by :meth:`ParsedPrompt.coordination_warnings`, which steering plans add to their warnings;
* a phrase drops leading determiners ("a", "the same", ...), and ends before the first word that
  starts a modifier or predicate ("is", "with", "in", "sitting", "directly", ...): "a cat is sitting
  directly above a dog in a park" gives (cat, above, dog).  Adjectives before the noun are kept.

Non-directional relations ("next to", "near", "on side of", "behind", ...) are recognised so they
delimit objects and can be reported, but they are never steered.
"""
from __future__ import annotations

from .parser import check_prompt_text, parse_cli_json, parse_prompt
from .results import NonDirectional, ParsedPrompt, Triplet
from .vocabulary import IDIOMS, NON_DIRECTIONAL_PHRASES, RELATION_PHRASES

__all__ = ["Triplet", "NonDirectional", "ParsedPrompt", "parse_prompt", "parse_cli_json", "check_prompt_text",
           "RELATION_PHRASES", "NON_DIRECTIONAL_PHRASES", "IDIOMS"]
