"""The ``l2s`` command line: ``parse``, ``generate``, ``eval``, ``compare``, ``make-data``, ``train`` and
the shapes world's ``shapes ...`` commands (``l2s shapes --help`` lists them).

Bad input ends with one line on stderr (``l2s: error: ...``) and exit code 2, never a silent
wrong image; running out of memory, a full disk or a failed write mid-run is such a line too.
Ctrl-C ends with one line and exit code 130: every long command resumes when rerun. The front
ends that parse their own arguments (``make-data``, ``train``: :mod:`.training`; ``shapes ...``:
:mod:`.shapes_model`, :mod:`.shapes_classifier`, :mod:`.shapes_bench`, :mod:`.grpo`, :mod:`.reward`)
are imported only when they run.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from l2s import __version__
from l2s.distributed import (
    accelerate_started_one,
    first_on_machine,
    launched,
    line_to_say,
    refuse_different_commands,
    stray_world_size,
)
from l2s.errors import L2SError
from l2s.quiet import drop_pure_noise

from . import compare, evaluate, generate, parse
from .help import OneLineParser
from .noise import library_bars_off, quiet_libraries
from .outputs import log_to_stderr, say, say_error

EXIT_USAGE = 2
EXAMPLES = """examples:
  l2s generate "a red circle to the left of a blue square"         # the shipped shapes-world model
  l2s generate "a dog right of a teddy bear" --model /models/FLUX.1-dev --classifier /models/l2s-flux-dev
  l2s eval --n-prompts 20 --seeds 0-3 --out l2s-eval                # accuracy, base vs steered
  l2s compare runs/mine runs/shipped                                # two eval runs, image for image
  l2s parse "a photo of a dog right of a teddy bear"

'l2s COMMAND --help' tells each command's options (a command's --quiet keeps only l2s's own lines)."""
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143   # 128 + SIGTERM
INTERRUPTED = "l2s: interrupted; rerun the same command to resume"
# A process killed (SIGKILL, the kernel's out-of-memory killer) says nothing. The launcher's summary may
# name this process, which only followed, as the first to fail: the line says which one stopped first.
PEER_STOPPED = ("l2s: error: another process of this run stopped first, and this one with it (the other's "
                "own line is above if it said one; a killed process says none)")
# How long a process that saw another stop waits to be stopped by its launcher (torchrun polls
# its processes every 0.1 s by default), so that the launcher's summary blames the other one.
PEER_WAIT_S = 10.0
RESTART_FLAGS = ("--restart", "--no-resume")   # a start-over (shapes grpo takes both spellings)
# Failed system calls a user fixes on the machine, then resumes: a full disk or quota, an I/O error, no
# permission, a read-only file system, too many open files. Any other (a missing file l2s reads) is a bug.
MACHINE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EACCES, errno.EPERM, errno.EROFS, errno.EMFILE, errno.ENFILE,
                  *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])}

# Commands that share their work over the processes of torchrun / accelerate launch.
SPREAD_COMMANDS = (("eval",), ("make-data",), ("train",), ("shapes", "make-data"), ("shapes", "train-classifier"),
                   ("shapes", "bench"))
# Commands a launcher may start as many processes: those above, and GRPO (accelerate's own spread).
LAUNCHED_COMMANDS = (*SPREAD_COMMANDS, ("shapes", "grpo"))
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
    (("shapes", "compare"), "steering against fine-tuning: one table from bench results, with training cost"),
    (("shapes", "grpo"), "GRPO-tune the shapes model's LoRA adapter for a spatial reward (rule or SpatialScore)"),
    (("shapes", "reward-data"), "preference pairs for the spatial reward model (flipped relations, exact check)"),
    (("shapes", "train-reward"), "train the SpatialScore reward model on 'reward-data' pairs"),
)


# Front end -> (module of l2s.cli, its main), imported only when the command runs.
_ENTRIES = {("make-data",): ("training", "make_data_main"), ("train",): ("training", "train_main"),
            ("shapes", "grpo"): ("grpo", "grpo_main"), ("shapes", "reward-data"): ("reward", "reward_data_main"),
            ("shapes", "train-reward"): ("reward", "train_reward_main"),
            ("shapes", "train-model"): ("shapes_model", "train_model_main"),
            ("shapes", "make-data"): ("shapes_classifier", "make_data_main"),
            ("shapes", "train-classifier"): ("shapes_classifier", "train_classifier_main"),
            ("shapes", "bench"): ("shapes_bench", "bench_main"),
            ("shapes", "compare"): ("shapes_bench", "compare_main")}


def _front_end(command: tuple[str, ...]):
    """The ``main(argv)`` of a front end in :data:`FRONT_ENDS`."""
    module, name = _ENTRIES[command]
    return getattr(importlib.import_module(f".{module}", __name__), name)


def _run_front_end(command: tuple[str, ...], argv: list[str]) -> int:
    name = "l2s " + " ".join(command)
    try:
        entry = _front_end(command)
    except (ImportError, AttributeError) as error:
        say(f"l2s: error: '{name}' is not available in this installation ({error})")
        return EXIT_USAGE
    return _guarded(lambda: int(entry(argv) or 0), argv)


def _out_of_memory(error: BaseException) -> bool:
    """torch reports a failed allocation as a RuntimeError (CPU) or OutOfMemoryError (CUDA)."""
    text = str(error)
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text))


def _system_error_line(error: OSError) -> str:
    """``l2s: error: FILE: REASON; ...``: a full disk, an I/O or permission error met mid-run. What
    was saved stays whole (atomic writes), so the same command resumes once it is fixed."""
    where = f"{error.filename}: " if error.filename else ""
    fix = "free some space" if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) else "fix that"
    return f"l2s: error: {where}{error.strerror or error}; {fix}, then rerun the same command (a run resumes)"


def _peer_gone(error: BaseException) -> bool:
    """A collective that failed because another process of the group ended (gloo / NCCL)."""
    text = str(error)
    return any(c.__name__ in ("DistBackendError", "DistNetworkError") for c in type(error).__mro__) or (
        "Connection closed by peer" in text or "Connection reset by peer" in text)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within: SIGTERM (``kill``, ``timeout``, a container's or scheduler's stop) is taken as Ctrl-C,
    a ``KeyboardInterrupt`` whose ``signum`` names it, so every command saves what it has and the
    same command resumes (signals reach only the main thread). Not in a
    launched rank: launchers stop the other ranks with SIGTERM when one fails, and a rank blocked
    in a collective must die at once, not after the launcher's grace period."""
    if launched() or threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_IGN, None):
        yield
        return

    def stop(signum, frame):
        interrupt = KeyboardInterrupt()
        interrupt.signum = signum
        raise interrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_exit(error: KeyboardInterrupt, argv: Sequence[str] = ()) -> int:
    _say_interrupted(error, argv)
    return EXIT_TERMINATED if getattr(error, "signum", None) == signal.SIGTERM else EXIT_INTERRUPTED


def _say_interrupted(error: KeyboardInterrupt, argv: Sequence[str] = ()) -> None:
    # On a terminal the line starts after the progress bar that ^C cut short. A command with
    # nothing to resume names what to do instead (``l2s_message``). A launcher passes Ctrl-C to
    # every process: once per machine, but a process interrupted alone (kill -INT) still says it.
    line = getattr(error, "l2s_message", None) or INTERRUPTED
    # rerun as typed, a start-over would remove what it has saved since: the resume leaves the flag out
    # (cut short before the start-over removed anything, that resumes the earlier run: said too)
    restart = next((flag for flag in RESTART_FLAGS if flag in argv), None)
    if restart:
        line = line.replace("rerun the same command to resume", f"rerun the same command without {restart} to "
                            f"resume what is saved, or with it to start over")
    if said := line_to_say(line):
        print(("\n" if sys.stderr.isatty() else "") + said, file=sys.stderr)


def _guarded(work, argv: Sequence[str] = ()) -> int:
    """Run ``work()``; user errors, running out of memory or disk, a failed system call and Ctrl-C
    become one stderr line (``argv``: the command line, which the line after Ctrl-C reads)."""
    try:
        return work()
    except L2SError as error:
        return say_error(error, EXIT_USAGE)
    except KeyboardInterrupt as error:
        return _interrupted_exit(error, argv)
    except (MemoryError, RuntimeError) as error:
        if launched() and _peer_gone(error):   # another process failed; the launcher ends this one
            return _peer_stopped()
        if not _out_of_memory(error):
            raise
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        say(f"l2s: error: out of memory ({first[:200]}); use smaller sizes, batches or counts")
        return EXIT_USAGE
    except OSError as error:
        if launched() and _peer_gone(error):   # a socket reset by another process that failed
            return _peer_stopped()
        if isinstance(error, BrokenPipeError):   # the reader of stdout is gone (| head): nothing to say
            _stdout_to_devnull()
            return 1
        if error.errno not in MACHINE_ERRNOS:   # PIL's "cannot write mode", a missing asset: a bug to see whole
            raise
        say(_system_error_line(error))
        return EXIT_USAGE


def _peer_stopped() -> int:
    """Say that another process stopped first; under torchrun / accelerate launch, wait (bounded) for
    the launcher to stop this one: a process that exits in the same poll as the one that failed is
    named the root cause of the launcher's summary when its rank is lower."""
    say(PEER_STOPPED)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(PEER_WAIT_S)
    return 1


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null: the interpreter's last flush would fail on the closed pipe again."""
    with contextlib.suppress(AttributeError, ValueError, OSError):   # a stdout without a file (captured)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def build_parser(full_eval: bool = True) -> argparse.ArgumentParser:
    """The ``l2s`` parser. ``full_eval=False`` leaves out the ``eval`` options (cheaper when
    another subcommand runs)."""
    p = OneLineParser(prog="l2s", description="Learn-to-Steer: spatial relations in "
                                "text-to-image diffusion, steered by a learned relation classifier.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"l2s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parse.add_parser(sub)
    generate.add_parser(sub)
    evaluate.add_parser(sub, full=full_eval)
    compare.add_parser(sub)
    # Listed here for 'l2s --help'; main() hands their arguments to the front end.
    for command, help_text in FRONT_ENDS:
        if len(command) == 1:
            sub.add_parser(command[0], help=help_text, add_help=False)
    shapes = sub.add_parser("shapes", help="the synthetic shapes world: train its model and classifier, bench, tune",
                            description="The shapes world: coloured shapes on small canvases, with an exact "
                                        "detector, so the whole loop runs offline. 'l2s shapes COMMAND --help' "
                                        "tells each command's options.")
    shapes_sub = shapes.add_subparsers(dest="shapes_command", required=True, metavar="COMMAND")
    for command, help_text in FRONT_ENDS:
        if command[0] == "shapes":
            shapes_sub.add_parser(command[1], help=help_text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log_to_stderr()
    drop_pure_noise()
    try:
        # Under a launcher each machine's first process alone draws the loading bars (not N copies).
        with _sigterm_as_interrupt(), quiet_libraries("--quiet" in argv or "--no-progress" in argv), \
                library_bars_off(not first_on_machine()):
            return _dispatch(argv)
    except KeyboardInterrupt as error:  # while the libraries import
        return _interrupted_exit(error, argv)


def _spreads(argv: list[str]) -> bool:
    """Whether ``argv`` runs a command that shares its work over a launcher's processes (its
    processes must be started alike; help and version join nothing)."""
    if {"-h", "--help", "--version"} & set(argv):
        return False
    return any(tuple(argv[:len(command)]) == command for command in SPREAD_COMMANDS)


def _one_process_only(argv: list[str]) -> str | None:
    """The error line for a command that runs in one process when a launcher started it as one of
    several (each copy would make the same images into the same folder, and all but one be
    refused), and for any command under a stray WORLD_SIZE."""
    if not launched() or {"-h", "--help", "--version"} & set(argv):
        return None
    known = [("generate",), ("parse",), ("compare",), *(command for command, _ in FRONT_ENDS), *LAUNCHED_COMMANDS]
    command = next((c for c in known if tuple(argv[:len(c)]) == c), None)
    if command is None:
        return None
    name = " ".join(command)
    if stray_world_size():
        how = ("to spread it, start it with torchrun or accelerate launch" if command in LAUNCHED_COMMANDS
               else f"'l2s {name}' runs in one process")
        return (f"l2s: error: WORLD_SIZE={os.environ['WORLD_SIZE']} in the environment says a launcher started "
                f"'l2s {name}' as one of several, but no launcher's RANK is set; unset it: env -u WORLD_SIZE "
                f"l2s {name} ... ({how})")
    if command in LAUNCHED_COMMANDS:
        return None
    spread = ", ".join(" ".join(c) for c in LAUNCHED_COMMANDS)
    return (f"l2s: error: 'l2s {name}' runs in one process: start it without torchrun or accelerate "
            f"launch (these share their work over processes: {spread})")


def _alone_under_accelerate(argv: list[str]) -> str | None:
    """The warning line for a command that spreads over processes when ``accelerate launch`` was
    asked for several but started one (it would otherwise run alone without a word)."""
    if not accelerate_started_one() or {"-h", "--help", "--version"} & set(argv):
        return None
    if not any(tuple(argv[:len(command)]) == command for command in LAUNCHED_COMMANDS):
        return None
    return ("l2s: warning: accelerate launch started one process, not several (--cpu, or --num_processes without "
            "--multi_gpu, starts one); for N, CPU too: accelerate launch --multi_gpu --num_processes N -m l2s.cli "
            "..., or torchrun --standalone --nproc_per_node N -m l2s.cli ...")


def _dispatch(argv: list[str]) -> int:
    if launched() and not first_on_machine() and {"-h", "--help", "--version"} & set(argv):
        return 0   # the machine's first process prints the help or version, not each of its N copies
    if refusal := _one_process_only(argv):
        say(refusal)
        return EXIT_USAGE
    if warning := _alone_under_accelerate(argv):
        say(warning)
    if launched() and _spreads(argv):
        refused = _guarded(lambda: refuse_different_commands(argv))
        if refused:
            return refused
    for command, _ in FRONT_ENDS:
        if tuple(argv[:len(command)]) == command:
            return _run_front_end(command, argv[len(command):])
    parser = build_parser(full_eval=argv[:1] == ["eval"])
    args, extras = parser.parse_known_args(argv)
    if extras:   # named with the subcommand whose --help lists what it takes
        command = " ".join(["l2s", args.command, *([args.shapes_command] if args.command == "shapes" else [])])
        said = line_to_say(f"l2s: error: unrecognized arguments: {' '.join(extras)} (see '{command} --help')")
        parser.exit(EXIT_USAGE, f"{said}\n" if said else None)
    return _guarded(lambda: args.func(args), argv)


__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_USAGE", "FRONT_ENDS", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
