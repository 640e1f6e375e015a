"""``--relations``: the relations to steer, given by hand instead of read by the prompt parser
(for prompts the parser cannot read, "to the left of a cat there is a dog")."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from l2s.errors import PromptError

RelationList = list[tuple[str, str, str]]

HELP = ('steer these relations instead of the ones the parser reads: "SUBJECT,RELATION,OBJECT" items '
        'separated by ";", e.g. "dog,left of,cat;cat,above,hat"; each object as the prompt writes it; '
        "RELATION: left of, right of, above, below, top-left of, ... (or a class name: to the left of)")
EVAL_HELP = HELP + '; "checks": each prompt\'s own scored relations'


def add_relations_arg(parser: argparse.ArgumentParser, help: str = HELP) -> None:
    parser.add_argument("--relations", metavar="S,REL,O;...", help=help)


def parse_relations(text: str) -> RelationList:
    """``"dog,left of,cat;cat,above,hat"`` -> ``[("dog", "left of", "cat"), ("cat", "above", "hat")]``."""
    if text.strip() == "checks":   # eval's word (evaluate.py reads it first): here it would be a bad item
        raise PromptError("--relations checks (each prompt's own scored relations) is for 'l2s eval', whose prompts "
                          "carry checks; here give SUBJECT,RELATION,OBJECT;...")
    relations = []
    for number, item in enumerate(text.split(";"), 1):
        if not item.strip():
            continue
        parts = tuple(part.strip() for part in item.split(","))
        if len(parts) != 3 or not all(parts):
            raise PromptError(f"--relations item {number} ({item.strip()!r}) is not SUBJECT,RELATION,OBJECT")
        relations.append(parts)
    if not relations:
        raise PromptError("--relations names no relation (SUBJECT,RELATION,OBJECT;...)")
    return relations


def given_parse(prompt: str, relations: RelationList):
    """The relations as if the parser had read them in ``prompt`` (each object must occur in it)."""
    from l2s.steer import parsed_from_relations

    return parsed_from_relations(prompt, relations)


def steer_given_relations(steerer, relations_of: Callable[[str], RelationList | None]) -> None:
    """Make ``steerer`` plan each prompt with ``relations_of(prompt)`` (the parser's when None)."""
    steerer.given_relations = relations_of
