"""A spread run's processes must all be started with one command: a refusal on every rank that
names what differs."""
from __future__ import annotations

from collections.abc import Sequence

from .group import world
from .launcher import launched


def refuse_different_commands(argv: Sequence[str]) -> None:
    """A spread run whose processes were started with different arguments would share out
    different work (or wait forever for a rank that finished early): refused on every rank."""
    if not launched():
        return
    from l2s.errors import UsageError

    try:
        group = world()
    except (ValueError, RuntimeError) as error:   # e.g. WORLD_SIZE set without a launcher's address
        raise UsageError(f"cannot join the launcher's processes ({str(error).splitlines()[0][:200]}): start "
                         "the command with torchrun or accelerate launch, or without WORLD_SIZE") from None
    commands = group.gather(list(argv))
    for rank, command in enumerate(commands):
        if command != commands[0]:
            raise UsageError(f"the processes of this run were started with different arguments "
                             f"({argument_difference(rank, command, commands[0])}): "
                             "start every process with the same command")


def argument_difference(rank: int, command: Sequence[str], first: Sequence[str]) -> str:
    """What rank ``rank`` was started with that rank 0 was not, and the reverse; a value is named
    with its option (``--seeds 2-3``: a bare ``2-3`` could be any number of a long command)."""
    from collections import Counter

    here, main = Counter(_with_options(command)), Counter(_with_options(first))
    only_here, only_main = (" ".join((a - b).elements()) or "nothing" for a, b in ((here, main), (main, here)))
    if only_here == only_main:
        return f"rank {rank} has them in another order"
    return f"rank {rank} alone: {only_here}; rank 0 alone: {only_main}"


def _with_options(argv: Sequence[str]) -> list[str]:
    """The arguments, an option and the value after it as one (``--seeds 0-1``)."""
    grouped: list[str] = []
    for arg in argv:
        if grouped and grouped[-1].startswith("-") and " " not in grouped[-1] and not arg.startswith("-"):
            grouped[-1] += f" {arg}"
        else:
            grouped.append(arg)
    return grouped
