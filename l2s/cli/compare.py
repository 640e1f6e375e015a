"""``l2s compare``: two ``l2s eval`` runs image for image (:mod:`l2s.evaluation.compare`)."""
from __future__ import annotations

import argparse
import sys

from .options import out_path

HELP = "compare two 'l2s eval' runs of the same prompts and seeds: accuracy per mode, paired sign test"
EXAMPLES = """examples:
  l2s compare runs/my-classifier runs/shipped                      # prints the table (Markdown)
  l2s compare runs/ckpt-20 runs/ckpt-10 --out runs/ckpt-20-vs-10.md
  l2s compare runs/rescored runs/geneval --modes images=steered    # an --images run against a generated one"""
DESCRIPTION = ("Pair the images of two 'l2s eval' runs (RUN_A, RUN_B: their --out folders) by prompt, seed and "
               "mode (or --modes: one mode of each), and print per mode (base, steered) each run's accuracy on the "
               "pairs, A - B, the pairs only one run got right and the exact two-sided sign test of that split. "
               "Runs scored by another rule or detector, or sharing no image, are refused.")


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help=HELP, description=DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", metavar="RUN_A", help="an 'l2s eval' run folder (e.g. your classifier's)")
    p.add_argument("run_b", metavar="RUN_B", help="the run to hold it against (e.g. the shipped classifier's)")
    p.add_argument("--modes", type=mode_pair, metavar="A_MODE=B_MODE",
                   help="pair RUN_A's images of one mode with RUN_B's of another (e.g. images=steered: an 'l2s eval "
                        "--images' run against a generated run's steered images); default: each mode both hold")
    p.add_argument("--out", type=out_path, metavar="FILE.md", help="also write the report here (Markdown)")
    p.set_defaults(func=run)


def mode_pair(text: str) -> tuple[str, str]:
    """``--modes A_MODE=B_MODE`` (argparse type): the two modes, checked against the runs later."""
    a_mode, _, b_mode = (part.strip() for part in text.partition("="))
    if not (a_mode and b_mode):
        raise argparse.ArgumentTypeError(f"{text!r}: give RUN_A's mode=RUN_B's mode, e.g. images=steered")
    return a_mode, b_mode


def run(args: argparse.Namespace) -> int:
    from l2s.evaluation.compare import REPORT_START, compare_runs, read_eval_run
    from l2s.files import atomic_write_text

    from .checks import check_report_file

    if args.out:
        check_report_file(args.out, "--out", REPORT_START, inputs=[args.run_a, args.run_b])
    report = compare_runs(read_eval_run(args.run_a), read_eval_run(args.run_b), args.modes).markdown()
    if args.out:   # before the table: a reader that stops early (| head) must not cost the file
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, report)
    print(report, end="")
    if args.out:
        print(f"l2s: wrote {args.out}", file=sys.stderr)
    return 0
