"""``l2s generate``'s prompts and seeds from its options, and which options change no image (the
settings its images record are :mod:`l2s.evaluation.run_settings`; the folder layout and resuming
are :mod:`l2s.evaluation.image_runs`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from l2s.errors import UsageError

from .outputs import wrote_line

if TYPE_CHECKING:
    from l2s.evaluation.image_runs import ImageJob


def numbered_prompt_lines(path: str) -> list[tuple[int, str]]:
    """(line number, prompt) of each non-blank line of ``--prompts FILE`` (UTF-8, one prompt a line)."""
    if Path(path).suffix == ".jsonl":   # each JSON line would become a prompt, braces and all
        raise UsageError(f"--prompts {path}: generate reads one prompt a line (plain text); a .jsonl of GenEval "
                         "metadata or PromptSpec lines is for 'l2s eval --prompts'")
    try:   # utf-8-sig, as eval reads it: a byte-order mark is not part of the first prompt
        # '-' is standard input, as for 'l2s parse' (printf 'P1\nP2\n' | l2s generate --prompts -)
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(f"--prompts {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise UsageError(f"--prompts {path}: cannot read it ({error.strerror or error})") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def labelled_prompts(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(label, prompt): the positional prompts, then those of ``--prompts FILE``; an error names a
    prompt by its label, ``prompt N`` (its folder's number) or ``FILE:LINE``."""
    given = [(f"prompt {i}", prompt) for i, prompt in enumerate(args.prompt)]
    lines = numbered_prompt_lines(args.prompts) if args.prompts else []
    prompts = given + [(f"{args.prompts}:{number}", prompt) for number, prompt in lines]
    if not prompts:
        raise UsageError("no prompt: give PROMPT (one or more) or --prompts FILE"
                         + (f" ({args.prompts} has no non-blank line)" if args.prompts else ""))
    return prompts


def seeds_of(args: argparse.Namespace) -> list[int]:
    """``--seeds 0-3,10`` or ``--seed N`` (default 0); sets ``args.seed`` when only the default applies."""
    from l2s.evaluation import parse_seeds

    if args.seeds is None:
        if args.seed is None:
            args.seed = 0
        return [args.seed]
    if args.seed is not None:
        raise UsageError("give --seed N or --seeds LIST, not both")
    seeds = parse_seeds(args.seeds)
    args.seed = seeds[0]
    return seeds


# Options that do not change an image: a rerun that differs only in them may resume.
NOT_IMAGE_SETTINGS = {"out", "quiet", "batch_size", "func", "prompt", "prompts", "seed", "seeds", "command",
                      "restart", "threads"}


def folders_line(out: Path, jobs: list[ImageJob], names: list[str], resumed: int = 0) -> str:
    """``l2s: wrote 4 image folders p00-s0000/ to p01-s0001/ (image.png, report.json), index.json and
    overview_01.png in OUT``;
    files only some folders hold (the steered images' comparison, say) are named as such; after a
    resume, how many of the folders this run made (``resumed`` were there already)."""
    span = f"{jobs[0].folder}/ to {jobs[-1].folder}/"
    count = f"{len(jobs)} image folders" if not resumed else \
        f"{len(jobs) - resumed} of the {len(jobs)} image folders ({resumed} were there already)"
    holding = {name: sum((out / job.folder / name).is_file() for job in jobs) for name in names}
    everywhere = [name for name in names if holding[name] == len(jobs)]
    some = [name for name in names if 0 < holding[name] < len(jobs)]
    parts = [", ".join(everywhere)] if everywhere else []
    if some:
        counts = {holding[name] for name in some}
        parts.append(f"{', '.join(some)} in {counts.pop() if len(counts) == 1 else 'some'} of them")
    files = "; ".join(parts)
    from l2s.evaluation.image_runs import overview_pages

    return wrote_line(out, [f"{count} {span} ({files})", "index.json", *overview_pages(out)])
