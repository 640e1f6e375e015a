"""What a prompt asks to steer: its relations, the token groups of their objects, their classes."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from l2s.errors import PromptError, UnsupportedRelationError
from l2s.parsing import (NON_DIRECTIONAL_PHRASES, NonDirectional, ParsedPrompt, Triplet, check_prompt_text,
                         parse_prompt)
from l2s.relations import CANONICAL, NEUTRAL, canonical_class, class_index
from l2s.tokens import check_prompt_length, first_occurrence_span, mention_groups, mention_warnings
from .consistency import contradiction_warning

# One relation as a user writes it: ("dog", "left of", "cat") or {"subject", "relation", "object"}.
RelationLike = Sequence[str] | dict


@dataclass
class SteeringPlan:
    """What will be steered: relations, the token groups of their objects, and class indices."""

    parsed: ParsedPrompt
    phrases: list[str] = field(default_factory=list)
    token_indices: list[tuple[int, ...]] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)       # (subject group, object group) per relation
    class_indices: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # objects left out, repeated ones, words the tokenizer lacks

    @classmethod
    def from_prompt(cls, prompt: str, tokenizer, max_length: int,
                    class_names: tuple[str, ...]) -> "SteeringPlan":
        """Parse ``prompt``, map each object phrase to the tokens of ``tokenizer`` (the one whose
        tokens the maps are read over), and each relation to its index in ``class_names``."""
        return cls.from_parsed(parse_prompt(prompt), tokenizer, max_length, class_names)

    @classmethod
    def from_parsed(cls, parsed: ParsedPrompt, tokenizer, max_length: int,
                    class_names: tuple[str, ...]) -> "SteeringPlan":
        """:meth:`from_prompt` for relations already found (by the parser, or given by the user)."""
        prompt = parsed.prompt
        check_prompt_length(tokenizer, prompt, max_length)
        plan = cls(parsed=parsed)
        if not parsed.steerable:
            return plan
        mentions = [m for t in parsed.triplets for m in ((t.subject, t.subject_span), (t.object, t.object_span))]
        groups, index = mention_groups(tokenizer, prompt, mentions, max_length)
        plan.phrases = [g.phrase for g in groups]
        plan.token_indices = [g.indices for g in groups]
        plan.pairs = list(zip(index[0::2], index[1::2]))
        plan.warnings = parsed.coordination_warnings() + mention_warnings(tokenizer, prompt, mentions, index)
        relations = [t.relation for t in parsed.triplets]
        contradiction = contradiction_warning(relations, plan.pairs, plan.phrases)
        plan.warnings += [contradiction] if contradiction else []
        plan.class_indices = [class_index(t.relation, class_names) for t in parsed.triplets]
        return plan

    @property
    def steered(self) -> bool:
        return bool(self.pairs)

    def to_json(self) -> dict:
        return {
            "relations": [t.to_dict() for t in self.parsed.triplets],
            "non_directional": [{"subject": n.subject, "relation": n.relation, "object": n.object}
                                for n in self.parsed.non_directional],
            "token_indices": {p: list(ix) for p, ix in zip(self.phrases, self.token_indices)},
            # Which token_indices entry each relation steers ("red circle #2": a repeated phrase's own).
            "relation_objects": [[self.phrases[s], self.phrases[o]] for s, o in self.pairs],
            "class_indices": self.class_indices,
            "steered": self.steered,
            "note": self.parsed.describe(),
            "warnings": self.warnings,
        }


def parsed_from_relations(prompt: str, relations: Sequence[RelationLike]) -> ParsedPrompt:
    """``relations`` as if the parser had found them in ``prompt`` (each object must occur in it).

    A relation is ``(subject, relation, object)`` or a dict with those keys; the relation may be
    spelled as a classifier class ("to the left of") or canonically ("left of"). A non-directional
    one ("next to", "behind") is reported, not steered, as the parser's are.
    """
    check_prompt_text(prompt)
    parsed = ParsedPrompt(prompt)
    for item in relations:
        if isinstance(item, dict):
            item = (item.get("subject"), item.get("relation"), item.get("object"))
        if isinstance(item, str) or len(item) != 3 or not all(isinstance(x, str) and x.strip() for x in item):
            raise PromptError(f"a relation is (subject, relation, object), three non-empty strings; got {item!r}")
        subject, relation, obj = (x.strip() for x in item)
        spans = first_occurrence_span(prompt, subject), (0, 0), first_occurrence_span(prompt, obj)
        if relation.lower() in NON_DIRECTIONAL_PHRASES:
            parsed.non_directional.append(NonDirectional(subject, relation, obj, *spans))
            continue
        parsed.triplets.append(Triplet(subject, _steerable_class(relation), obj, *spans))
    return parsed


def _steerable_class(relation: str) -> str:
    """The canonical class of a relation to steer; the error names what can be given instead."""
    steerable = f"steerable: {', '.join(CANONICAL)}; reported unsteered: {', '.join(NON_DIRECTIONAL_PHRASES)}"
    try:
        canonical = canonical_class(relation)
    except UnsupportedRelationError as error:
        if "did you mean" in str(error):
            raise
        raise UnsupportedRelationError(f"unknown relation {relation!r} ({steerable})") from None
    if canonical == NEUTRAL:
        raise UnsupportedRelationError(f"{relation!r} is not a spatial relation ({steerable})")
    return canonical


def relations_per_prompt(relations, count: int) -> list:
    """``relations`` for each of ``count`` prompts: one list for all, or one list per prompt (an
    entry ``[]``: steer nothing in that prompt; ``None``: the parser's relations)."""
    if relations is None:
        return [None] * count
    if isinstance(relations, str):
        raise PromptError(f"relations is a list of (subject, relation, object), got the string {relations!r}")
    relations = list(relations)
    nested = bool(relations) and all(_one_prompts_relations(r) for r in relations)
    if not nested:
        return [relations] * count
    if len(relations) != count:
        raise PromptError(f"relations has {len(relations)} lists for {count} prompts; give one list per "
                          "prompt, or one list for all")
    return relations


def _one_prompts_relations(entry) -> bool:
    """Whether ``entry`` is one prompt's list (of relations, or empty, or None), not one relation."""
    return entry is None or (isinstance(entry, (list, tuple)) and not any(isinstance(x, str) for x in entry))
