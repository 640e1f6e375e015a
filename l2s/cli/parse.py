"""``l2s parse``: print the (subject, relation, object) triplets the relation parser finds."""
from __future__ import annotations

import argparse
import json
import sys

from l2s.errors import L2SError

EXAMPLES = """examples:
  l2s parse "a photo of a dog right of a teddy bear"       # dog | right of | teddy bear
  l2s parse --json "a frog above a sneaker below a teapot"
  printf 'a cat left of a dog\\na cup above a book\\n' | l2s parse --json -"""


def add_parser(sub) -> None:
    p = sub.add_parser("parse", help="extract (subject, relation, object) triplets from prompts",
                       description="Print the (subject, relation, object) triplets the relation parser reads in "
                                   "a prompt: what generate and eval steer unless --relations says otherwise.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="the prompt, or - to read one prompt per line from stdin")
    p.add_argument("--json", action="store_true", help="print one JSON array per prompt")
    p.set_defaults(func=run)


def _stdin_prompts() -> list[str]:
    """Every line of stdin, read and decoded (strict UTF-8) before any prompt is parsed."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream already (tests, embedding)
        return [line.rstrip("\n") for line in sys.stdin]
    lines = stream.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    prompts = []
    for number, raw in enumerate(lines, 1):
        try:
            prompts.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            raise L2SError(f"stdin line {number} is not UTF-8 text (byte {error.start + 1}: "
                           f"{raw[error.start:error.start + 1]!r})") from None
    return prompts


def run(args: argparse.Namespace) -> int:
    from l2s.errors import PromptError

    if args.prompt != "-":
        _print_parse(args.prompt, args.json)
        return 0
    for number, prompt in enumerate(_stdin_prompts(), 1):   # a bad line is named and skipped: the rest still parse
        try:
            _print_parse(prompt, args.json, where=f"stdin line {number}: ")
        except PromptError as error:
            print(f"l2s: warning: stdin line {number}: {error}", file=sys.stderr)
            if args.json:
                print("[]")   # one array per input line, so outputs stay aligned with inputs
    return 0


def _print_parse(prompt: str, as_json: bool, where: str = "") -> None:
    from l2s.parsing import parse_prompt

    parsed = parse_prompt(prompt)
    for line in parsed.coordination_warnings():   # as generate says it; stdout keeps only what was read
        print(f"l2s: warning: {where}{line}", file=sys.stderr)
    if as_json:
        print(json.dumps(parsed.triplet_dicts()))
        return
    for t in parsed.triplets:
        print(f"{t.subject} | {t.relation} | {t.object}")
    if not parsed.triplets:   # generate would run unsteered; parse only says what it read
        print(parsed.describe().removesuffix(": generating unsteered"))
    elif parsed.non_directional:   # read too, as generate's note says: never steered
        print(f"not steered: {parsed.not_steered()}")
