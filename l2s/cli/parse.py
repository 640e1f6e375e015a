"""``l2s parse``: print the (subject, relation, object) triplets the relation parser finds."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("parse", help="extract (subject, relation, object) triplets from prompts")
    p.add_argument("prompt", help="the prompt, or - to read one prompt per line from stdin")
    p.add_argument("--json", action="store_true", help="print one JSON array per prompt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from l2s.parsing import parse_cli_json, parse_prompt

    prompts = [line.rstrip("\n") for line in sys.stdin] if args.prompt == "-" else [args.prompt]
    for prompt in prompts:
        if args.json:
            print(json.dumps(parse_cli_json(prompt)))
        else:
            parsed = parse_prompt(prompt)
            for t in parsed.triplets:
                print(f"{t.subject} | {t.relation} | {t.object}")
            if not parsed.triplets:
                print(parsed.describe())
    return 0
