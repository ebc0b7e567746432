"""The sslpipe CLI: one subcommand per stage, every option documented, overrides parsed as YAML,
and expected failures as one line with exit status 2."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path

import pytest

from tasks.cli import MissingInputError, build_parser, main, parse_overrides
from tasks.errors import UserError
from tasks.params import ParamsError
from tasks.stages import STAGE_NAMES, STAGES

REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ("ingest", "curate", "teacher", "pretrain", "evaluate", "export", "register")
COMMANDS = (*STAGE_NAMES, "serve", "embed", "schedule", "run", "summary")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_one_subcommand_per_stage_plus_run() -> None:
    assert STAGE_NAMES == PIPELINE
    assert set(subparsers(build_parser())) == set(COMMANDS)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_commands_take_their_paths(stage) -> None:
    args = build_parser().parse_args([stage.name])
    assert {o.name: getattr(args, o.name) for o in stage.options} == {o.name: o.default for o in stage.options}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    parser = subparsers(build_parser())[command]
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {action.option_strings} has no help"
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    # schedule checks the params.yaml of its --project-dir: the scheduled runs read that one.
    assert ("--project-dir" if command == "schedule" else "--params") in capsys.readouterr().out


def test_overrides_are_parsed_as_yaml() -> None:
    assert parse_overrides(["pretrain.epochs=3", "pretrain.mixup=false", "a.b=x"]) == {
        "pretrain.epochs": 3,
        "pretrain.mixup": False,
        "a.b": "x",
    }
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_overrides(["pretrain.epochs"])


def test_user_errors_are_one_line_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert issubclass(MissingInputError, UserError) and issubclass(ParamsError, UserError)
    code = main(["evaluate", "--params", str(REPO_ROOT / "params.yaml"), "--set", "evaluate.k=0"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("sslpipe evaluate: error: ") and "evaluate.k = 0" in error
    code = main(["evaluate", "--params", str(REPO_ROOT / "params.yaml"), "--data", str(tmp_path / "none")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert f"{tmp_path / 'none' / 'manifest.csv'} not found: run `sslpipe curate` first, or pass --data." in error
    code = main(["curate", "--params", str(REPO_ROOT / "params.yaml"), "--data", str(tmp_path / "none")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and f"{tmp_path / 'none' / 'manifest.csv'} not found: run `sslpipe ingest` first" in error


@pytest.mark.parametrize("module", [*(s.module for s in STAGES), "tasks.serve", "tasks.model_uris"])
def test_every_stage_error_is_a_user_error(module: str) -> None:
    """The CLI prints UserErrors as one line; every error a stage defines must be one."""
    loaded = importlib.import_module(module)
    # A stage that is a package (tasks.curate) defines its errors in its modules.
    modules = [
        loaded,
        *(importlib.import_module(m.name) for m in pkgutil.iter_modules(getattr(loaded, "__path__", []), f"{module}.")),
    ]
    errors = [
        obj
        for part in modules
        for obj in vars(part).values()
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == part.__name__
    ]
    assert errors or module == "tasks.register", f"{module} defines no error class"
    assert all(issubclass(error, UserError) for error in errors), errors


def test_the_summary_links_a_servers_version_page_and_tells_how_to_open_a_local_store() -> None:
    """A tracking server is its own UI (`mlflow ui --backend-store-uri http://...` would not start); a local
    store is opened with `mlflow ui`."""
    from tasks.cli import mlflow_ui

    registration = {"model_name": "ssl-embedder", "version": "3", "experiment_id": "7", "run_id": "abc"}
    on_server = mlflow_ui({**registration, "tracking_uri": "http://mlflow.example:5000/"})
    assert on_server == "http://mlflow.example:5000/#/models/ssl-embedder/versions/3"
    local = mlflow_ui({**registration, "tracking_uri": "sqlite:////project/mlflow.db"})
    assert local.startswith("mlflow ui --backend-store-uri sqlite:////project/mlflow.db")
