"""``--help`` of the front ends that parse their own arguments: a description, then examples."""
from __future__ import annotations

import argparse
import copy
import functools
import textwrap
from collections.abc import Callable
from typing import Any


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like every other bad input (not argparse's usage block)."""

    def __init__(self, *args, program_name: str = "l2s", **kwargs):
        # Whole option names only: a prefix would read generate's '--mode fast' as '--model fast'.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.program_name = program_name   # what the error line starts with: a bench script names itself

    def add_subparsers(self, **kwargs):
        # Subcommands' errors name the same program as their parent's.
        kwargs.setdefault("parser_class", functools.partial(type(self), program_name=self.program_name))
        return super().add_subparsers(**kwargs)

    def error(self, message: str):
        from l2s.distributed import line_to_say  # a spread run: once per machine

        said = line_to_say(f"{self.program_name}: error: {message} (see '{self.prog} --help')")
        self.exit(2, f"{said}\n" if said else None)


class SettingsParser(OneLineParser):
    """A parser whose :meth:`add_setting` options default to the fields of a settings object (a
    torch-free dataclass, so ``--help`` stays fast) and say that default in their help."""

    def __init__(self, *args, settings: Callable[[], Any], **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings()
        self.setting_fields: dict[str, str] = {}   # dest -> field of the settings object
        self.setting_defaults: dict[str, Any] = {}

    def add_setting(self, *flags: str, field: str | None = None, group=None, **kwargs) -> argparse.Action:
        """An option whose default is the settings' ``field`` (default: the option's dest), added to
        ``group`` when given (e.g. a mutually exclusive one)."""
        # In a group the default is filled in after parsing: argparse takes a value that *is* the
        # default object (a small int) for "not given", and would let a conflicting option pass.
        action = (group or self).add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
        self.setting_fields[action.dest] = field or action.dest
        value = self.setting_defaults[action.dest] = getattr(self.settings, self.setting_fields[action.dest])
        if group is None:
            action.default = value        # DefaultsHelpFormatter shows it
        else:                             # a suppressed default the formatter cannot see: say it here
            said = shown_default(value)
            action.help = f"{action.help} (default: {said})" if action.help else f"default: {said}"
        return action

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for dest, value in self.setting_defaults.items():
            if not hasattr(namespace, dest):
                setattr(namespace, dest, value)
        return namespace, extras


def shown_default(value: Any) -> str:
    """A default as a user would type it: ``2-4`` for a (low, high) pair, ``none`` for None."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}-{value[1]}"
    return str(value)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and each option's default after its help unless the help says it
    (flags that are off by default, and options without a default, say nothing)."""

    def _format_action(self, action: argparse.Action) -> str:
        if _default_to_show(action) and "default" not in (action.help or ""):
            action = copy.copy(action)    # the parser's own action keeps its help
            said = f"default: {shown_default(action.default)}".replace("%", "%%")
            action.help = f"{action.help} ({said})" if action.help else said
        return super()._format_action(action)


def _default_to_show(action: argparse.Action) -> bool:
    quiet = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                                argparse._VersionAction, argparse._CountAction))
    hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS or \
        (isinstance(action.default, (list, tuple, dict)) and not action.default)   # an empty --tuned list
    return bool(action.option_strings) and not quiet and not hidden


def command_parser(prog: str, description: str, examples: list[str], note: str = "",
                   settings: Callable[[], Any] | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser whose help ends with ``examples`` (one command each) and ``note``;
    a :class:`SettingsParser` when ``settings`` makes the defaults."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    if note:
        epilog += "\n\n" + textwrap.fill(note, 100)
    kwargs = dict(prog=prog, description=textwrap.fill(description, 100), epilog=epilog,
                  formatter_class=DefaultsHelpFormatter)
    if settings is None:
        return OneLineParser(**kwargs)
    return SettingsParser(settings=settings, **kwargs)
