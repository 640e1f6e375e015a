"""Runs spread over processes and machines: ``torchrun`` or ``accelerate launch`` start N copies
of one command, and each copy does its share of the work.

What the launcher's environment says of a process (:mod:`.launcher`); the process group it joins
and its place there (:mod:`.group`); lines every process meets, said once per machine
(:mod:`.say_once`); processes started with different commands, refused (:mod:`.commands`); and the
output folder rank 0 locks for the group (:mod:`.lock`).
"""
from __future__ import annotations

from .commands import argument_difference, refuse_different_commands
from .group import World, world
from .launcher import accelerate_started_one, first_on_machine, launched, stray_world_size
from .lock import output_lock
from .say_once import EVERY_PROCESS, line_to_say

__all__ = ["EVERY_PROCESS", "World", "accelerate_started_one", "argument_difference", "first_on_machine", "launched",
           "line_to_say", "output_lock", "refuse_different_commands", "stray_world_size", "world"]
