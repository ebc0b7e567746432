"""MLflow registry logic on a real (SQLite) MLflow: champion promotion and model URIs."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.registry import CHAMPION, METRIC_TAG, RegistryError, maybe_promote, parse_models_uri


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def add_version(client: MlflowClient, name: str, top1: float, tmp_path: Path) -> str:
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=(tmp_path / "artifact").as_uri()).version
    client.set_model_version_tag(name, version, METRIC_TAG, f"{top1:.6f}")
    return str(version)


def test_champion_moves_only_when_beaten_by_the_margin(client: MlflowClient, tmp_path: Path) -> None:
    v1 = add_version(client, "m", 0.50, tmp_path)
    assert maybe_promote(client, "m", v1, 0.50, margin=0.01)[0]  # first version always becomes champion
    v2 = add_version(client, "m", 0.505, tmp_path)
    promoted, reason = maybe_promote(client, "m", v2, 0.505, margin=0.01)
    assert not promoted and "margin" in reason
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == v1
    v3 = add_version(client, "m", 0.53, tmp_path)
    assert maybe_promote(client, "m", v3, 0.53, margin=0.01)[0]
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == v3


def test_models_uri_parsing() -> None:
    assert parse_models_uri("models:/emb@champion") == ("emb", "champion", None)
    assert parse_models_uri("models:/emb/3") == ("emb", None, "3")
    with pytest.raises(RegistryError, match="name an alias or version"):
        parse_models_uri("models:/emb")
    with pytest.raises(RegistryError, match="not a model registry URI"):
        parse_models_uri("runs:/abc/model")


def test_unknown_alias_says_what_to_do(client: MlflowClient, tmp_path: Path) -> None:
    from tasks.registry import download_checkpoint

    with pytest.raises(RegistryError, match="Run the register stage first"):
        download_checkpoint("models:/nothing@champion", tmp_path / "model.pt", project_dir=tmp_path)
