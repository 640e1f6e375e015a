"""Prompts of the reward model's preference pairs: chains of shapes-world objects and their flips.

A prompt here is a :class:`Chain`: objects in order, a chain pattern (the lengths of the runs
"a A r1 a B r2 a C", joined by " and ", as in :data:`l2s.evaluation.MULTI_RELATION_PATTERNS`) and
one directional relation per chained pair. :meth:`Chain.flipped` reverses some relations (left of
<-> right of, above <-> below) and changes nothing else, which is how a pair's perturbed prompt is
made. :func:`parse_chain` reads such a prompt back from its text (the rule reward needs that).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2s.errors import L2SError
from l2s.evaluation import MULTI_RELATION_PATTERNS, PromptSpec, chain_clauses
from l2s.relations import ABOVE, BELOW, DIRECTIONAL, LEFT_OF, PROMPT_PHRASE, RIGHT_OF

from .recipes import HELD_OUT_COLOURS, HELD_OUT_SHAPES
from .scenes import COLOURS, SHAPES

OPPOSITE = {LEFT_OF: RIGHT_OF, RIGHT_OF: LEFT_OF, ABOVE: BELOW, BELOW: ABOVE}
# (objects, relations) of the pairs' prompts: 2-4 objects, 1-3 relations.
PAIR_PATTERNS = ((2, 1), (3, 2), (4, 2), (4, 3))
# Default weights of those patterns (PairSettings.patterns), keyed "OBJ,REL".
PAIR_PATTERN_WEIGHTS = {"2,1": 0.35, "3,2": 0.45, "4,2": 0.1, "4,3": 0.1}


@dataclass(frozen=True)
class Chain:
    """Objects ("red circle", ...) in prompt order, the chain run lengths, one relation per pair."""

    names: tuple[str, ...]
    chains: tuple[int, ...]
    relations: tuple[str, ...]

    def __post_init__(self) -> None:
        if sum(self.chains) != len(self.names) or len(self.relations) != len(self.pairs()):
            raise L2SError(f"inconsistent chain: {self.names}, runs {self.chains}, relations {self.relations}")

    def pairs(self) -> list[tuple[str, str]]:
        """(subject, object) of every chained pair, in relation order."""
        out, start = [], 0
        for length in self.chains:
            run = self.names[start:start + length]
            out += list(zip(run, run[1:]))
            start += length
        return out

    @property
    def pattern(self) -> str:
        return f"{len(self.names)}obj_{len(self.relations)}rel"

    @property
    def objects_key(self) -> str:
        """The prompt with its relations left out: every flip of a chain shares it."""
        return "|".join(self.names) + "/" + ",".join(map(str, self.chains))

    def spec(self) -> PromptSpec:
        clauses, checks = chain_clauses(list(self.names), list(self.relations), self.chains)
        return PromptSpec(" and ".join(clauses), tuple(checks), tag=self.pattern)

    @property
    def prompt(self) -> str:
        return self.spec().prompt

    def with_relations(self, relations: Sequence[str]) -> Chain:
        return Chain(self.names, self.chains, tuple(relations))

    def flipped(self, indices: Sequence[int]) -> Chain:
        """The same chain with the relations at ``indices`` reversed, everything else kept."""
        indices = set(indices)
        if not indices or not indices <= set(range(len(self.relations))):
            raise L2SError(f"flip indices {sorted(indices)} out of range for {len(self.relations)} relations")
        return self.with_relations([OPPOSITE[r] if i in indices else r for i, r in enumerate(self.relations)])

    def without(self, index: int) -> Chain:
        """The chain with object ``index`` left out: an end object takes its relation along, a
        middle one joins its neighbours by the relation before it; a run left with one object
        becomes a clause without a relation ("a red circle")."""
        if not 0 <= index < len(self.names):
            raise L2SError(f"object index {index} out of range for {len(self.names)} objects")
        names, chains, relations, start, link = [], [], [], 0, 0
        for length in self.chains:
            run = list(range(start, start + length))
            links = list(self.relations[link:link + length - 1])
            if index in run:
                at = run.index(index)
                if links:   # link k joins objects k and k+1 of the run
                    links.pop(at - 1 if at == length - 1 else at)
                run.remove(index)
            if run:
                names += [self.names[i] for i in run]
                chains.append(len(run))
                relations += links
            start, link = start + length, link + length - 1
        return Chain(tuple(names), tuple(chains), tuple(relations))


def pair_palette(include_held_out: bool = False) -> tuple[list[str], list[str]]:
    """(shapes, colours) the pairs draw from; the held-out colour and shape are left out unless asked."""
    shapes = [s for s in SHAPES if include_held_out or s not in HELD_OUT_SHAPES]
    colours = [c for c in COLOURS if include_held_out or c not in HELD_OUT_COLOURS]
    return shapes, colours


def random_chain(rng: np.random.Generator, n_objects: int, n_relations: int,
                 shapes: Sequence[str], colours: Sequence[str]) -> Chain:
    """Objects of distinct colours in a known pattern, relations drawn uniformly (repeats allowed)."""
    key = (n_objects, n_relations)
    if key not in MULTI_RELATION_PATTERNS:
        raise L2SError(f"no chain pattern for {n_objects} objects / {n_relations} relations")
    picked = rng.choice(len(colours), size=n_objects, replace=False)
    names = tuple(f"{colours[int(c)]} {shapes[int(rng.integers(len(shapes)))]}" for c in picked)
    relations = tuple(DIRECTIONAL[int(i)] for i in rng.integers(len(DIRECTIONAL), size=n_relations))
    return Chain(names, tuple(MULTI_RELATION_PATTERNS[key]), relations)


_PHRASES = sorted(((PROMPT_PHRASE[r], r) for r in DIRECTIONAL), key=lambda p: -len(p[0]))
_SPLIT = re.compile(" (" + "|".join(re.escape(p) for p, _ in _PHRASES) + ") ")


def parse_chain(prompt: str) -> Chain:
    """The :class:`Chain` of a prompt worded as :meth:`Chain.spec` words it ("a red circle to
    the left of a blue square and a ..."); a leading "a photo of" and a final "." are accepted."""
    text = " ".join(prompt.strip().rstrip(".").lower().split())
    text = text[len("a photo of "):] if text.startswith("a photo of ") else text
    names, chains, relations = [], [], []
    for clause in text.split(" and "):
        parts = _SPLIT.split(clause)    # object, phrase, object, phrase, ...
        objects = parts[0::2]
        if len(objects) < 2:
            raise L2SError(f"no directional relation in {clause!r} of the prompt {prompt!r}")
        for obj in objects:
            words = obj.split()
            if len(words) != 3 or words[0] not in ("a", "an") or words[1] not in COLOURS or words[2] not in SHAPES:
                raise L2SError(f"{obj!r} is not 'a <colour> <shape>' of the shapes world (prompt {prompt!r})")
            names.append(f"{words[1]} {words[2]}")
        relations += [dict(_PHRASES)[p] for p in parts[1::2]]
        chains.append(len(objects))
    return Chain(tuple(names), tuple(chains), tuple(relations))
