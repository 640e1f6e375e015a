"""Options every model-loading command spells alike: ``--dtype`` and ``--device``.

Both resolve only when a command runs, so ``--help`` needs no torch import.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DTYPES = ("auto", "fp32", "bf16", "fp16")
# Spellings of earlier releases (make-data's --torch-dtype took torch's names).
_LONG_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
LONG_NAMES = {short: long for long, short in _LONG_NAMES.items()}  # fp16 -> float16
DTYPE_HELP = "weights dtype (default auto: the model's published dtype on CUDA, FLUX bf16 and SD fp32; fp32 on CPU)"


def deprecated(message: str) -> None:
    """An old spelling's warning: once per machine in a spread run (every process parses it)."""
    from .outputs import say

    say(f"l2s: warning: {message}")


class _DeprecatedDtype(argparse.Action):
    """``--torch-dtype NAME``: the old spelling of ``--dtype``, still read, with a warning."""

    def __call__(self, parser, namespace, value, option_string=None):
        name = _LONG_NAMES.get(value, value)
        if name not in DTYPES:
            parser.error(f"argument {option_string}: invalid choice: {value!r} (choose from {', '.join(DTYPES)})")
        deprecated(f"{option_string} is deprecated; use --dtype {name}")
        setattr(namespace, self.dest, name)


class _DtypeOrOldMapDtype(argparse.Action):
    """make-data's ``--dtype``: the weights dtype; torch's long names, its meaning in earlier
    releases, still set the maps' storage dtype (``--map-dtype``), with a warning."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value in _LONG_NAMES:
            deprecated(f"--dtype {value} (the maps' storage dtype) is now --map-dtype {_LONG_NAMES[value]}; "
                       "--dtype is the weights dtype")
            namespace.map_dtype = _LONG_NAMES[value]
        elif value in DTYPES:
            setattr(namespace, self.dest, value)
        else:
            parser.error(f"argument --dtype: invalid choice: {value!r} (choose from {', '.join(DTYPES)})")


def flag_of(renamed: dict[str, str] | None = None):
    """A library argument's name as this command's flag (``batch_size`` -> ``--batch-size``)."""
    return lambda name: (renamed or {}).get(name, "--" + name.replace("_", "-"))


def add_dtype_arg(parser: argparse.ArgumentParser, help: str = DTYPE_HELP, old_map_dtype: bool = False) -> None:
    """``--dtype {auto,fp32,bf16,fp16}`` and its hidden old spelling ``--torch-dtype``; with
    ``old_map_dtype`` (make-data) ``--dtype float16`` etc. still mean the maps' storage dtype."""
    if old_map_dtype:
        parser.add_argument("--dtype", action=_DtypeOrOldMapDtype, default="auto", metavar="{" + ",".join(DTYPES) + "}",
                            help=help)
    else:
        parser.add_argument("--dtype", choices=DTYPES, default="auto", help=help)
    parser.add_argument("--torch-dtype", dest="dtype", action=_DeprecatedDtype, help=argparse.SUPPRESS)


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when a GPU is usable)")


def resolve_device(args: argparse.Namespace) -> str:
    """``args.device``, the default filled in (and kept) when none was given."""
    from l2s.devices import default_device

    if getattr(args, "device", None) is None:
        args.device = default_device()
    return args.device


def out_text(text: str) -> str:
    """``--out`` (argparse type): refuses an empty path, which would mean the current folder. A ``~`` the
    shell left (quoted, or after ``--out=``) is the home folder, not a folder named ``~`` here."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path would write into the current folder: name a folder "
                                         "(. for the current one)")
    return os.path.expanduser(text)


def out_path(text: str) -> Path:
    return Path(out_text(text))


MAX_THREADS = 1024


def thread_count(text: str) -> int:
    """``--threads``: a whole number from 1 to ``MAX_THREADS`` (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_THREADS}, got {text!r}") from None
    if not 1 <= value <= MAX_THREADS:   # torch tries to allocate any count (100000: MemoryError)
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_THREADS}, got {value}")
    return value


THREADS_HELP = "torch CPU threads of this process (default: torch's, one per core)"


def add_threads_arg(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    """``--threads N``; a command applies it with :func:`use_threads` before its work."""
    parser.add_argument("--threads", type=thread_count, default=None, help=help)


def use_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads`` (nothing when it was not given)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
