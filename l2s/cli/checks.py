"""Options checked before any work: ranges, types, the device, input and output paths.

The messages are those of the Python API (:mod:`l2s.pipelines.arguments`), with the option's
name in place of the argument's; a value is never silently replaced by a default.
"""
from __future__ import annotations

import argparse


def check_sampling_args(args: argparse.Namespace) -> None:
    """``--steps``, ``--height``, ``--width``, ``--guidance``, ``--true-cfg``, ``--step-size``,
    ``--seed`` and ``--device``: one ``l2s: error:`` line for the first that cannot work."""
    from l2s.errors import UsageError
    from l2s.values import finite_number, image_side, seed_value, step_count
    from l2s.devices import check_device

    from .options import flag_of

    if getattr(args, "steps", None) is not None:
        step_count(args.steps, "--steps")
    for option in ("height", "width"):
        if getattr(args, option, None) is not None:
            image_side(getattr(args, option), f"--{option}")
    if getattr(args, "guidance", None) is not None and finite_number(args.guidance, "--guidance") < 0:
        raise UsageError(f"--guidance must be 0 or more, got {args.guidance!r}")
    true_cfg = getattr(args, "true_cfg", None)
    if true_cfg is not None and not finite_number(true_cfg, "--true-cfg") > 0:
        raise UsageError(f"--true-cfg must be a positive number (1 = no guidance), got {true_cfg!r}")
    step_size = getattr(args, "step_size", None)
    if step_size is not None and not finite_number(step_size, "--step-size") > 0:
        raise UsageError(f"--step-size must be a positive finite number, got {step_size!r}")
    if hasattr(args, "seed"):
        seed_value(args.seed, "--seed")
    if getattr(args, "device", None) is not None:
        check_device(args.device, flag_of())
    _check_execution(args)
    _check_capture_backend(args)
    _check_engine(args)
    _check_weights(args)


def _check_weights(args: argparse.Namespace) -> None:
    """``--lora`` and ``--reward-model`` name folders that hold what they must, before a model loads
    (a near miss of a shipped name is said by the name's resolution)."""
    from l2s.shapes.recipes import check_weights_folders

    check_weights_folders(getattr(args, "lora", None) or None, getattr(args, "reward_model", None) or None)


def _check_execution(args: argparse.Namespace) -> None:
    """``--execution fast+cudagraphs`` replays CUDA graphs: refused on another device before a model
    loads; ``reference`` computes its maps one way only (no ``--capture-backend native``)."""
    from l2s.errors import UsageError

    execution = getattr(args, "execution", None)
    if execution == "reference" and getattr(args, "capture_backend", None) not in (None, "sdpa"):
        raise UsageError(f"--capture-backend {args.capture_backend} applies to the fast modes: --execution "
                         "reference computes its maps as the published code does")
    if execution != "fast+cudagraphs":
        return
    from l2s.devices import default_device

    device = getattr(args, "device", None) or default_device()
    if not str(device).startswith("cuda"):
        raise UsageError(f"--execution fast+cudagraphs replays CUDA graphs: this run's device is {device}")


def _check_capture_backend(args: argparse.Namespace) -> None:
    """``--capture-backend native`` without its kernels on this run's device (l2s_fast not built)
    is refused before a model loads, not at the first steered step."""
    if getattr(args, "capture_backend", None) != "native":
        return
    from l2s.errors import UsageError
    from l2s.devices import default_device
    from l2s.pipelines.arguments import check_capture_kernels

    try:
        check_capture_kernels("native", getattr(args, "device", None) or default_device())
    except UsageError as error:
        raise UsageError(f"--capture-backend native: {error}") from None


def _check_engine(args: argparse.Namespace) -> None:
    """An engine that cannot be built on this run's device (CUDA-only kinds elsewhere, onnxruntime
    off CPU or with ``--dtype bf16``, a missing package, an unusable engine cache) is refused before a
    model loads."""
    engine = getattr(args, "engine", None)
    if engine is None or engine in ("auto", "eager"):
        return
    from l2s.devices import default_device, weights_dtype
    from l2s.engines import EngineError, check_engine_request
    from l2s.errors import UsageError

    device = getattr(args, "device", None) or default_device()
    if getattr(args, "execution", None) == "reference":
        raise UsageError(f"--execution reference runs every step eagerly, as published: --engine {engine} needs a "
                         "fast --execution")
    dtype = getattr(args, "dtype", None)   # auto is known once the model is (its family's dtype)
    try:
        check_engine_request(engine, device, None if dtype in (None, "auto") else weights_dtype(dtype, device))
    except EngineError as error:
        raise UsageError(f"--engine {engine}: {error}") from None


def check_output_file(path, flag: str) -> None:
    """``flag``'s file can be written (its folder made if missing), checked before the work that
    fills it, so a bad path fails in a second instead of after the run."""
    import os
    from pathlib import Path

    from l2s.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # mkdir says "File exists" when the folder's place (or one above) is a file: name that file
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else error.strerror
        raise UsageError(f"{flag} {path}: cannot make its folder ({why})") from None
    probe = path.parent / f".{path.name}.{os.getpid()}.l2s-write-check"   # one per process (torchrun ranks)
    try:                               # os.access says yes to root on read-only and virtual folders
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{flag} {path}: cannot write in its folder ({error.strerror})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


def check_input_paths(paths, flag: str, folder: bool = False) -> None:
    """Each of ``paths`` exists (a folder with ``folder``), before any model loads."""
    from pathlib import Path

    from l2s.errors import UsageError

    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        if not (Path(path).is_dir() if folder else Path(path).exists() and not Path(path).is_dir()):  # pipes too
            raise UsageError(f"{flag} {path}: no such {'folder' if folder else 'file'}")


def check_report_file(path, flag: str, header: str, inputs=(), beside=None, run_folder=None) -> None:
    """``flag``'s Markdown report may be written: a new file or one this command wrote (its first
    line starts with ``header``), never one of ``inputs``, never inside an l2s run folder (its
    command owns what is there), this command's own ``run_folder`` included, marked yet or not.
    ``beside``: ``(suffix, is_ours)`` for a file written next to it."""
    from pathlib import Path

    from l2s.errors import UsageError

    path = Path(path)
    if path.suffix != ".md" and not path.is_dir():   # a folder is named as such by check_output_file
        raise UsageError(f"{flag} {path}: give a Markdown file's path (ending in .md)")
    owner = _run_folder_above(path, run_folder)
    if owner is not None:               # checked before check_output_file makes any folder
        raise UsageError(f"{flag} {path}: inside {owner}, an l2s run folder that its command owns; write the report "
                         "elsewhere")
    check_output_file(path, flag)
    targets = [path] + ([path.with_suffix(beside[0])] if beside else [])
    for target in targets:
        if any(target.resolve() == Path(source).resolve() for source in inputs):
            raise UsageError(f"{flag} {path}: would overwrite {target}, an input of this command")
    if path.exists() and path.stat().st_size and not _first_line(path).startswith(header):
        raise UsageError(f"{flag} {path}: exists and is not a report of this command; delete it or give a new path")
    if beside and targets[1].exists() and not beside[1](targets[1]):
        raise UsageError(f"{flag} {path}: {targets[1]} beside it exists and is not this command's; delete it or "
                         "give a new path")


def _run_folder_above(path, run_folder=None):
    """The nearest folder above ``path`` that is ``run_folder`` or marked as holding an l2s
    command's output, or None."""
    from pathlib import Path

    from l2s.files import KIND_FILE

    own = None if run_folder is None else Path(run_folder).resolve()
    for folder in path.resolve().parents:
        if folder == own or (folder / KIND_FILE).is_file():
            return folder
    return None


def _first_line(path) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline()
    except (OSError, UnicodeDecodeError):
        return ""
