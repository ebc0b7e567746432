"""``models:/`` URIs: parsing, and a clear error for what the registry does not hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.errors import UserError
from tasks.model_uris import (
    RegistryError,
    download_checkpoint,
    download_onnx,
    parse_models_uri,
)


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_models_uri_parsing() -> None:
    assert parse_models_uri("models:/emb@champion") == ("emb", "champion", None)
    assert parse_models_uri("models:/emb/3") == ("emb", None, "3")
    with pytest.raises(RegistryError, match="name an alias or version"):
        parse_models_uri("models:/emb")
    with pytest.raises(RegistryError, match="not a model registry URI"):
        parse_models_uri("runs:/abc/model")


def test_registry_errors_are_user_errors() -> None:
    assert issubclass(RegistryError, UserError)


@pytest.mark.parametrize("download", [download_checkpoint, download_onnx])
def test_unknown_alias_says_what_to_do(download, client: MlflowClient, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="Run the register stage first"):
        download("models:/nothing@champion", tmp_path / "model", project_dir=tmp_path)


def test_the_curate_stage_imports_mlflow_only_to_resolve_a_uri() -> None:
    """Curate imports this module for its optional ``models:/`` embedder: about a second of MLflow per run otherwise."""
    probe = "import sys, tasks.curate; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"
