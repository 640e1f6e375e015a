"""``l2s --version``, ``python -m l2s``, help without torch, and readable help for every command."""
import re
import subprocess
import sys

import pytest

from l2s import __version__
from l2s.cli import FRONT_ENDS, main

COMMANDS = [("parse",), ("generate",), ("eval",), ("compare",), *(command for command, _ in FRONT_ENDS), ("shapes",)]
HEAVY = ("torch", "diffusers", "transformers", "numpy")


def help_text(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    assert help_text(["--version"], capsys).strip() == f"l2s {__version__}"


def test_python_dash_m_l2s_is_the_command():
    result = subprocess.run([sys.executable, "-m", "l2s", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"l2s {__version__}"


def modules_after_help(argv: list[str], names) -> str:
    """Which of ``names`` a fresh interpreter holds after ``l2s ARGV`` printed its help (the list's repr)."""
    script = ("import sys\nfrom l2s.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              f"print([m for m in {tuple(names)!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: l2s"), result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["parse", "--help"]])
def test_help_imports_no_torch(argv):
    assert modules_after_help(argv, HEAVY) == "[]"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_imports_no_model_library(command):
    """'l2s COMMAND --help' answers at once: torch, diffusers and transformers load after parsing."""
    assert modules_after_help([*command, "--help"], ("torch", "diffusers", "transformers")) == "[]"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_readable_help(command, capsys):
    text = help_text([*command, "--help"], capsys)
    assert text.startswith("usage: l2s " + " ".join(command))
    assert not re.search(r":(func|data|mod|class|meth):|``", text), "a raw docstring in --help"
    if command != ("shapes",):
        assert "\nexamples:\n" in text and f"  l2s {' '.join(command)}" in text
    description = text.split("\n\n")[1]
    assert len(description) > 40 and not description.startswith(("positional", "options"))


def _settings_parsers():
    from l2s.cli.grpo import build_grpo_parser
    from l2s.cli.reward import build_reward_data_parser, build_train_reward_parser
    from l2s.cli.shapes_model import build_train_model_parser

    return {"shapes train-model": build_train_model_parser, "shapes grpo": build_grpo_parser,
            "shapes reward-data": build_reward_data_parser, "shapes train-reward": build_train_reward_parser}


@pytest.mark.parametrize("name", sorted(_settings_parsers()))
def test_settings_options_take_and_show_the_settings_defaults(name):
    """Each option backed by a settings field defaults to that field and says so in --help."""
    from l2s.cli.help import shown_default

    parser = _settings_parsers()[name]()
    assert parser.setting_fields, "no option reads the settings"
    actions = {action.dest: action for action in parser._actions}
    for dest, field in parser.setting_fields.items():
        value = getattr(parser.settings, field)
        assert parser.setting_defaults[dest] == value, dest
        shown = " ".join(parser._get_formatter()._format_action(actions[dest]).split())
        assert shown.endswith(f"default: {shown_default(value)})") or shown.endswith(f" default: {shown_default(value)}"), \
            shown
    assert "default: 0.0003" in " ".join(parser.format_help().split()) or name != "shapes grpo"


def _front_end_parsers():
    from l2s.cli import grpo, reward, shapes_bench, shapes_classifier, shapes_model, training

    return {"make-data": training.build_make_data_parser, "train": training.build_train_parser,
            "shapes train-model": shapes_model.build_train_model_parser,
            "shapes make-data": shapes_classifier.build_make_data_parser,
            "shapes train-classifier": shapes_classifier.build_train_classifier_parser,
            "shapes bench": shapes_bench.build_bench_parser, "shapes compare": shapes_bench.build_compare_parser,
            "shapes grpo": grpo.build_grpo_parser, "shapes reward-data": reward.build_reward_data_parser,
            "shapes train-reward": reward.build_train_reward_parser}


@pytest.mark.parametrize("name", sorted(_front_end_parsers()))
def test_every_option_with_a_default_says_it_in_help(name):
    import argparse

    parser = _front_end_parsers()[name]()
    for action in parser._actions:
        flags = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction))
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS \
            or action.default == []        # an append option given nothing: nothing to say
        if action.option_strings and not flags and not no_default:
            shown = " ".join(parser._get_formatter()._format_action(action).split())
            assert "default" in shown, (name, action.option_strings, shown)


def test_a_setting_in_an_either_or_group_keeps_its_conflict_and_its_default(capsys):
    """--top-k 6 (the default's own value) with --no-top-k is still refused; left out, it is 6."""
    from l2s.cli.grpo import build_grpo_parser

    parser = build_grpo_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--out", "o", "--reward", "rule", "--top-k", "6", "--no-top-k"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert parser.parse_args(["--out", "o", "--reward", "rule"]).top_k == 6
    assert parser.parse_args(["--out", "o", "--reward", "rule", "--no-top-k"]).no_top_k


@pytest.mark.parametrize("name", sorted(_front_end_parsers()))
def test_every_option_says_what_it_is(name):
    """An option's help is more than its default ('--warmup  default: 200' left its unit unsaid)."""
    parser = _front_end_parsers()[name]()
    for action in parser._actions:
        if action.option_strings:
            said = (action.help or "").split("(default")[0].removeprefix("default:").strip()
            assert said, (name, action.option_strings)
