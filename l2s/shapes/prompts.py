"""Prompt sets of the shapes world, worded like the shapes model's training captions.

Objects of a prompt always have distinct colours: each is then its own colour segment for
:class:`~l2s.shapes.ShapesDetector`, even when generated objects touch (two red objects that
touch would merge into one component).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from l2s.errors import L2SError
from l2s.evaluation import (
    DEFAULT_PROMPT_COUNT,
    MULTI_RELATION_PATTERNS,
    PromptSet,
    PromptSpec,
    RelationCheck,
    chain_clauses,
    unique_prompts,
)
from l2s.relations import DIRECTIONAL, PROMPT_PHRASE

from .recipes import HELD_OUT_COLOURS, HELD_OUT_SHAPES
from .scenes import COLOURS, SHAPES


def _shapes_palette(shapes: Sequence[str] | None, colours: Sequence[str] | None) -> tuple[list[str], list[str]]:
    shapes, colours = list(shapes or SHAPES), list(colours or COLOURS)
    unknown = [s for s in shapes if s not in SHAPES] + [c for c in colours if c not in COLOURS]
    if unknown:
        raise L2SError(f"unknown shapes-world names {', '.join(unknown)} "
                       f"(shapes: {', '.join(SHAPES)}; colours: {', '.join(COLOURS)})")
    return shapes, colours


def _draw_shape_objects(rng: np.random.Generator, count: int, shapes: list[str], colours: list[str]) -> list[str]:
    picked = rng.choice(len(colours), size=count, replace=False)  # distinct colours
    return [f"{colours[c]} {shapes[int(rng.integers(len(shapes)))]}" for c in picked]


def shapes_position_prompts(n: int = DEFAULT_PROMPT_COUNT, seed: int = 0,
                            relations: Sequence[str] = DIRECTIONAL,
                            shapes: Sequence[str] | None = None,
                            colours: Sequence[str] | None = None) -> list[PromptSpec]:
    """``n`` distinct shapes-world prompts ``a <colour> <shape> <relation> a <colour> <shape>``.

    Worded like the shapes model's training captions ("a red circle to the left of a blue
    square"); the two objects have different colours; the check's labels ("red circle") are what
    :class:`l2s.shapes.ShapesDetector` looks for. ``relations`` default to GenEval's four
    directions. Drawn with ``numpy.random.default_rng(seed)``.
    """
    shapes, colours = _shapes_palette(shapes, colours)
    if len(colours) < 2:
        raise L2SError("shapes prompts need at least two colours")
    relations = list(relations)
    rng = np.random.default_rng(seed)

    def draw() -> PromptSpec:
        a, b = _draw_shape_objects(rng, 2, shapes, colours)
        relation = relations[int(rng.integers(len(relations)))]
        return PromptSpec(f"a {a} {PROMPT_PHRASE[relation]} a {b}", (RelationCheck(a, relation, b),),
                          tag="position")

    capacity = math.perm(len(colours), 2) * len(shapes) ** 2 * len(relations)
    return unique_prompts(n, capacity, draw)


def shapes_multi_relation_prompts(n_objects: int, n_relations: int, n: int = DEFAULT_PROMPT_COUNT,
                                  seed: int = 0, shapes: Sequence[str] | None = None,
                                  colours: Sequence[str] | None = None) -> list[PromptSpec]:
    """Multi-relation shapes-world prompts in Learn-to-Steer's patterns (see
    :func:`l2s.evaluation.multi_relation_prompts`), e.g. (3, 2): "a red circle to the left of a
    blue square above a green triangle". No "a photo of" prefix (the shapes captions have none);
    objects have distinct colours; relations are distinct directions; each chained pair is a check.
    """
    key = (n_objects, n_relations)
    if key not in MULTI_RELATION_PATTERNS:
        known = ", ".join(f"{o},{r}" for o, r in MULTI_RELATION_PATTERNS)
        raise L2SError(f"no prompt pattern for {n_objects} objects / {n_relations} relations (known: {known})")
    shapes, colours = _shapes_palette(shapes, colours)
    if len(colours) < n_objects:
        raise L2SError(f"{n_objects} objects of distinct colours need {n_objects} colours, got {len(colours)}")
    rng = np.random.default_rng(seed)

    def draw() -> PromptSpec:
        names = _draw_shape_objects(rng, n_objects, shapes, colours)
        relations = [DIRECTIONAL[i] for i in rng.choice(len(DIRECTIONAL), size=n_relations, replace=False)]
        clauses, checks = chain_clauses(names, relations, MULTI_RELATION_PATTERNS[key])
        return PromptSpec(" and ".join(clauses), tuple(checks), tag=f"{n_objects}obj_{n_relations}rel")

    capacity = (math.perm(len(colours), n_objects) * len(shapes) ** n_objects
                * math.perm(len(DIRECTIONAL), n_relations))
    return unique_prompts(n, capacity, draw)


def ood_position_prompts(n: int, seed: int = 0, held_colours: Sequence[str] = HELD_OUT_COLOURS,
                         held_shapes: Sequence[str] = HELD_OUT_SHAPES) -> list[PromptSpec]:
    """Two-object prompts in which at least one object has a held-out colour or shape."""
    pool = shapes_position_prompts(n=400, seed=seed)
    held = set(held_colours) | set(held_shapes)
    chosen = [spec for spec in pool if held & set(spec.prompt.split())]
    if len(chosen) < n:
        raise L2SError(f"only {len(chosen)} held-out prompts available, asked for {n}")
    return chosen[:n]


# ``--prompts shapes`` and ``--prompts shapes:N_OBJ,N_REL`` of ``l2s eval``.
SHAPES_PROMPT_SET = PromptSet(position=shapes_position_prompts, multi_relation=shapes_multi_relation_prompts,
                              position_help="shapes-world position prompts",
                              multi_relation_help="shapes-world multi-relation prompts")
