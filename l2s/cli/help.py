"""``--help`` of the front ends that parse their own arguments: a description, then examples."""
from __future__ import annotations

import argparse
import textwrap


def command_parser(prog: str, description: str, examples: list[str], note: str = "") -> argparse.ArgumentParser:
    """An ``argparse`` parser whose help ends with ``examples`` (one command each) and ``note``."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    if note:
        epilog += "\n\n" + textwrap.fill(note, 100)
    return argparse.ArgumentParser(prog=prog, description=textwrap.fill(description, 100), epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
