"""Prompt files: GenEval's ``metadata.jsonl`` lines, ``PromptSpec`` lines and plain prompt lists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from l2s.errors import L2SError, UnsupportedRelationError
from .geometry import GENEVAL_POSITIONS
from .specs import PromptSpec, RelationCheck


def geneval_metadata(spec: PromptSpec) -> dict[str, Any]:
    """The ``metadata.jsonl`` line of a prompt folder.

    GenEval's own format (``include`` clauses with ``"position": [relation, index]``) when GenEval
    can express the checks (its four relation words, at most one relation per subject); the
    referenced objects come first, so a two-object prompt gives exactly GenEval's line. Otherwise
    :meth:`PromptSpec.to_dict` (``checks``), which GenEval cannot score but ``l2s eval`` can.
    """
    subjects = [c.subject for c in spec.checks]
    if not spec.checks or len(set(subjects)) < len(subjects) or any(
            c.relation not in GENEVAL_POSITIONS for c in spec.checks):
        return spec.to_dict()
    order = list(reversed(spec.objects))
    include = [{"class": name, "count": 1} for name in order]
    for check in spec.checks:
        include[order.index(check.subject)]["position"] = [check.relation, order.index(check.object)]
    return {"tag": spec.tag, "include": include, "prompt": spec.prompt}


def spec_from_metadata(data: dict[str, Any]) -> PromptSpec | None:
    """A PromptSpec from a GenEval metadata line or a ``PromptSpec.to_dict`` line.

    GenEval lines without a ``position`` clause (its counting, colour, ... tasks) give None.
    """
    if not isinstance(data, dict) or "prompt" not in data:
        raise ValueError("expected a JSON object with a 'prompt'")
    if "checks" in data:
        return PromptSpec.from_dict(data)
    if "include" not in data:
        raise ValueError("neither 'checks' (PromptSpec) nor 'include' (GenEval metadata)")
    include = data["include"]
    # Reversed: GenEval lists the referenced object first; this restores the prompt's order.
    checks = [RelationCheck(item["class"], item["position"][0], include[int(item["position"][1])]["class"])
              for item in reversed(include) if item.get("position")]
    if not checks:
        return None
    return PromptSpec(data["prompt"], tuple(checks), tag=data.get("tag", "position"))


def read_prompt_file(path: str | Path) -> tuple[list[PromptSpec], int]:
    """Prompts of a file, and how many of its lines carry no spatial relation (skipped): see
    :func:`read_prompt_lines`."""
    numbered, skipped = read_prompt_lines(path)
    return [spec for _, spec in numbered], skipped


def read_prompt_lines(path: str | Path) -> tuple[list[tuple[int, PromptSpec]], int]:
    """Prompts of a file with their line numbers (from 1), and how many of its lines carry no
    spatial relation (skipped).

    ``.jsonl``: GenEval metadata lines (e.g. its ``evaluation_metadata.jsonl``, whose non-position
    lines are skipped) or ``PromptSpec.to_dict`` lines. Any other file: one prompt per line (e.g.
    T2I-CompBench's ``spatial_val.txt``), checked on the relations :func:`l2s.parsing.parse_prompt`
    finds; prompts without one are skipped.
    """
    path = Path(path)
    try:  # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first prompt
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as error:
        raise L2SError(f"cannot read the prompt file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise L2SError(f"the prompt file {path} is not UTF-8 text (line {line})") from None
    specs: list[tuple[int, PromptSpec]] = []
    skipped = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            spec = _spec_from_json_line(path, number, line)
        else:
            try:
                spec = spec_from_prompt(line.strip())
            except L2SError as error:    # the file's line, as .jsonl errors name theirs
                raise type(error)(f"{path}:{number} ({line.strip()!r}): {error}") from None
        if spec is None:
            skipped += 1
        else:
            specs.append((number, spec))
    return specs, skipped


def _spec_from_json_line(path: Path, number: int, line: str) -> PromptSpec | None:
    try:
        return spec_from_metadata(json.loads(line))
    except json.JSONDecodeError:
        raise L2SError(f"{path}:{number}: not a JSON line") from None
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise L2SError(f"{path}:{number}: not a GenEval metadata or PromptSpec line ({error})") from None


def spec_from_prompt(prompt: str, parsed=None) -> PromptSpec | None:
    """The checks of a prompt's parsed relations, or of ``parsed`` (a :class:`l2s.parsing.ParsedPrompt`
    of relations given by hand) when given; None when there are none."""
    from l2s.parsing import parse_prompt

    parsed = parse_prompt(prompt) if parsed is None else parsed
    checks = [RelationCheck(t.subject, t.relation, t.object) for t in parsed.triplets]
    for n in parsed.non_directional:
        try:  # "next to", "near", ... have T2I-CompBench's distance rule; "behind" has no rule at all
            checks.append(RelationCheck(n.subject, n.relation, n.object))
        except UnsupportedRelationError:
            pass
    return PromptSpec(prompt, tuple(checks), tag="spatial") if checks else None

