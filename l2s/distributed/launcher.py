"""What the launcher's environment says of this process: whether it is one of several, whether
``accelerate launch`` started it alone, and whether it is its machine's first."""
from __future__ import annotations

import os


def launched() -> bool:
    """Whether a launcher started this process as one of several (read from the environment:
    nothing is joined or imported)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


# What MPI launchers (accelerate's --mpirun_hostfile) name the process count with, in place of WORLD_SIZE.
MPI_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def accelerate_started_one() -> bool:
    """Whether ``accelerate launch`` was asked for several processes but started this one alone: its
    simple launcher (``--cpu``, or ``--num_processes`` without ``--multi_gpu``) runs one process and
    sets the rendezvous address of several (``MASTER_ADDR``), but no ``WORLD_SIZE``."""
    env = os.environ
    return ("ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and not launched()
            and not any(name in env for name in MPI_SIZES))


def stray_world_size() -> bool:
    """``WORLD_SIZE`` says several processes but no ``RANK`` says which: the shell's (a cluster
    job's), not a launcher's (launchers set both)."""
    return launched() and "RANK" not in os.environ


def first_on_machine() -> bool:
    """Whether this process is its machine's first (``LOCAL_RANK`` 0; any process of no launcher,
    a stray ``WORLD_SIZE``'s included)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 if launched() and not stray_world_size() else True
