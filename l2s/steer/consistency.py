"""Relations of one prompt that cannot all hold ("a cat left of a dog" and "a dog left of a cat"):
steering them pulls the objects both ways, so the plan says so in one warning line."""
from __future__ import annotations

from collections.abc import Sequence

from l2s.errors import UnsupportedRelationError
from l2s.relations import (ABOVE, BELOW, BOTTOM_LEFT_OF, BOTTOM_RIGHT_OF, LEFT_OF, RIGHT_OF, TOP_LEFT_OF,
                           TOP_RIGHT_OF, canonical_class)

# Each relation as moves along the image's axes: (horizontal, vertical), -1 = left / up of the object.
_AXES = {LEFT_OF: (-1, 0), RIGHT_OF: (1, 0), ABOVE: (0, -1), BELOW: (0, 1), TOP_LEFT_OF: (-1, -1),
         TOP_RIGHT_OF: (1, -1), BOTTOM_LEFT_OF: (-1, 1), BOTTOM_RIGHT_OF: (1, 1)}


def contradiction_warning(relations: Sequence[str], pairs: Sequence[tuple[int, int]],
                          phrases: Sequence[str]) -> str | None:
    """One line when the relations (canonical names, with their (subject, object) groups) order some
    objects in a circle along one axis, else None. A relation of a group to itself is left to the
    token warnings."""
    clashing = [k for axis in (0, 1) for k in _cycle_edges(relations, pairs, axis)]
    if not clashing:
        return None
    named = "; ".join(f"{phrases[pairs[k][0]]} {relations[k]} {phrases[pairs[k][1]]}" for k in sorted(set(clashing)))
    return f"these relations contradict each other ({named}): steering pulls the objects both ways"


def _cycle_edges(relations: Sequence[str], pairs: Sequence[tuple[int, int]], axis: int) -> list[int]:
    """Indices of the relations on a cycle of "comes before" along ``axis`` (0: left-right, 1: up-down)."""
    edges = {}   # (earlier group, later group) -> relation indices
    for k, (relation, (subject, obj)) in enumerate(zip(relations, pairs)):
        step = _moves(relation)[axis]
        if step and subject != obj:
            edges.setdefault((subject, obj) if step < 0 else (obj, subject), []).append(k)
    on_cycle = []
    for (a, b), ks in edges.items():
        if _reaches(edges, b, a):   # b also comes before a
            on_cycle += ks
    return on_cycle


def _moves(relation: str) -> tuple[int, int]:
    """``relation``'s moves, spelled canonically or as a classifier class ("to the left of"); none for
    a name it does not know (the plan's class lookup refuses that with its own message)."""
    try:
        return _AXES.get(canonical_class(relation), (0, 0))
    except UnsupportedRelationError:
        return (0, 0)


def _reaches(edges: dict, start: int, goal: int) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo += [b for a, b in edges if a == node]
    return False
