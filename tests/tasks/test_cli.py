"""The sslpipe CLI: every subcommand documents every option; overrides parse as YAML."""

from __future__ import annotations

import argparse

import pytest

from tasks.cli import build_parser, parse_overrides
from tasks.params import ParamsError

COMMANDS = ("ingest", "teacher", "pretrain", "evaluate", "export", "register", "serve", "run", "summary")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_one_subcommand_per_stage_plus_run() -> None:
    assert set(subparsers(build_parser())) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    parser = subparsers(build_parser())[command]
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {action.option_strings} has no help"
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "--params" in capsys.readouterr().out


def test_overrides_are_parsed_as_yaml() -> None:
    assert parse_overrides(["pretrain.epochs=3", "pretrain.mixup=false", "a.b=x"]) == {
        "pretrain.epochs": 3, "pretrain.mixup": False, "a.b": "x"}
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_overrides(["pretrain.epochs"])
