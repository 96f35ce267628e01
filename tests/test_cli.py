"""The ``qfocal`` command registers every subcommand the README documents."""

from __future__ import annotations

import pytest

from qfocal.cli import build_parser, main

COMMANDS = (
    "table",
    "plot",
    "bench",
    "data",
    "train",
    "evaluate",
    "compare",
    "demo",
    "yolov5-train",
    "ultralytics-train",
)


def test_every_documented_subcommand_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = set(COMMANDS) - set(sub.choices)
    assert not missing, f"qfocal lacks subcommands {sorted(missing)}"


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_subcommand_is_an_error():
    with pytest.raises(SystemExit) as info:
        main(["tabel"])
    assert info.value.code == 2
