"""Help text that stands on its own: every subcommand has a one-line description and an example, every option
has help and shows its default, and ``compare --help`` groups its options (common, FCOS, frameworks)."""

from __future__ import annotations

import argparse

import pytest

from qfocal.cli import build_parser

# Options whose default is not worth a word: switches (off unless given) and --help / --version.
_NO_DEFAULT = (
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
    argparse._HelpAction,
    argparse._VersionAction,
)


def _subparsers(
    parser: argparse.ArgumentParser, prefix: str = "qfocal"
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command's parser, depth first, with its command line."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{prefix} {name}", sub))
                found += _subparsers(sub, f"{prefix} {name}")
    return found


COMMANDS = _subparsers(build_parser())


def test_the_walk_finds_the_commands():
    names = {name for name, _ in COMMANDS}
    assert {
        "qfocal table",
        "qfocal compare",
        "qfocal data synth",
        "qfocal yolov5-train",
        "qfocal bench",
    } <= names


@pytest.mark.parametrize("name, parser", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_subcommand_has_a_description_and_an_example(name, parser):
    assert parser.description and parser.description.strip(), f"{name}: no description"
    text = parser.format_help()
    assert "example" in text.lower(), f"{name}: no example in --help"


@pytest.mark.parametrize("name, parser", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_has_help_and_shows_its_default(name, parser):
    missing, no_default = [], []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        label = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(label)
            continue
        shown = parser._get_formatter()._get_help_string(action) or ""
        shows = "default" in shown.lower()
        if (
            not isinstance(action, _NO_DEFAULT)
            and action.default not in (None, argparse.SUPPRESS)
            and not shows
        ):
            no_default.append(label)
    assert not missing, f"{name}: options without help: {missing}"
    assert not no_default, f"{name}: options whose help does not show the default: {no_default}"


def test_compare_groups_its_options():
    parser = dict(COMMANDS)["qfocal compare"]
    titles = [g.title.lower() for g in parser._action_groups if g._group_actions]
    for group in ("common", "fcos", "framework"):
        assert any(group in t for t in titles), titles
