"""The ``l2s`` command line: ``parse``, ``generate``, ``eval``, ``make-data``, ``train`` and
``shapes train-model | make-data | train-classifier | bench``.

Bad input ends with one line on stderr (``l2s: error: ...``) and exit code 2, never a silent
wrong image. The front ends that parse their own arguments (``make-data``, ``train``: :mod:`.training`;
``shapes ...``: :mod:`.shapes`) are imported only when they run.
"""
from __future__ import annotations

import argparse
import sys

from l2s.errors import L2SError

from . import evaluate, generate, parse

EXIT_USAGE = 2

# Subcommands whose front end parses its own arguments: (argv prefix, help line).
FRONT_ENDS = (
    (("make-data",), "build the classifier's training data (attention maps of dual inversions)"),
    (("train",), "train the relation classifier on a 'make-data' dataset"),
    (("shapes", "train-model"),
     "train the shapes-world text-to-image model (from scratch, or continue one: --init-from)"),
    (("shapes", "make-data"), "dual-inverted attention maps of rendered shapes scenes (the classifier's data)"),
    (("shapes", "train-classifier"),
     "train the shapes-world relation classifier (small config; --no-dual: leakage ablation)"),
    (("shapes", "bench"), "base vs steered spatial accuracy of the shapes model (writes the results table)"),
)


def _front_end(command: tuple[str, ...]):
    """The ``main(argv)`` of a front end in :data:`FRONT_ENDS`."""
    if command == ("make-data",):
        from .training import make_data_main as entry
    elif command == ("train",):
        from .training import train_main as entry
    else:
        from . import shapes

        entry = {"train-model": shapes.train_model_main, "make-data": shapes.make_data_main,
                 "train-classifier": shapes.train_classifier_main, "bench": shapes.bench_main}[command[1]]
    return entry


def _run_front_end(command: tuple[str, ...], argv: list[str]) -> int:
    name = "l2s " + " ".join(command)
    try:
        entry = _front_end(command)
    except (ImportError, AttributeError) as error:
        print(f"l2s: error: '{name}' is not available in this installation ({error})", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(entry(argv) or 0)
    except L2SError as error:
        print(f"l2s: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def build_parser(full_eval: bool = True) -> argparse.ArgumentParser:
    """The ``l2s`` parser. ``full_eval=False`` leaves out the ``eval`` options (cheaper when
    another subcommand runs)."""
    p = argparse.ArgumentParser(prog="l2s", description="Learn-to-Steer: spatial relations in "
                                "text-to-image diffusion, steered by a learned relation classifier.")
    sub = p.add_subparsers(dest="command", required=True)
    parse.add_parser(sub)
    generate.add_parser(sub)
    evaluate.add_parser(sub, full=full_eval)
    # Listed here for 'l2s --help'; main() hands their arguments to the front end.
    for command, help_text in FRONT_ENDS:
        if len(command) == 1:
            sub.add_parser(command[0], help=help_text, add_help=False)
    shapes = sub.add_parser("shapes", help="the synthetic shapes world (see 'l2s shapes train-model --help')")
    shapes_sub = shapes.add_subparsers(dest="shapes_command", required=True)
    for command, help_text in FRONT_ENDS:
        if command[0] == "shapes":
            shapes_sub.add_parser(command[1], help=help_text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for command, _ in FRONT_ENDS:
        if tuple(argv[:len(command)]) == command:
            return _run_front_end(command, argv[len(command):])
    args = build_parser(full_eval=argv[:1] == ["eval"]).parse_args(argv)
    try:
        return args.func(args)
    except L2SError as e:
        print(f"l2s: error: {e}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["EXIT_USAGE", "FRONT_ENDS", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
