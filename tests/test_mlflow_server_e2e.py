"""End to end against a real MLflow tracking server over HTTP, on SQLite and on PostgreSQL.

What a team runs: ``mlflow server`` with its own backend store (a SQLite file, or a
PostgreSQL server) and ``--artifacts-destination``, reached at
``MLFLOW_TRACKING_URI=http://...``. ``sslpipe run`` registers into it, every artifact
uploaded through the server into its destination and none left in the project; a
second registration becomes version 2 and the gate, reading the champion's tags from
the server, decides; ``sslpipe serve`` downloads the champion from the server and
serves the embeddings of the exported ONNX file. One pipeline run, against the
server on SQLite; the model it trained is then registered into a server on
PostgreSQL, where only the registry differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.datasets import cut_cifar10
from tests.project import make_project, sh
from tests.servers import MlflowServer, mlflow_server, postgres_server, served_embeddings

pytestmark = pytest.mark.slow

BACKENDS = ("sqlite", "postgresql")
MODEL = "ssl-embedder"
# What the project would write for its own store if the server were not used.
LOCAL_STORE = ("mlflow.db", "mlartifacts", "mlruns")
MARGIN = 0.5  # of kNN top-1: more than the same model, registered again, can beat its champion by


@dataclass(frozen=True)
class Registered:
    """A project whose pipeline ran against ``server``, and the two registrations it made there."""

    server: MlflowServer
    project: Path
    first: dict  # reports/registration.json after `sslpipe run`
    second: dict  # after `sslpipe register` once more, with champion_margin=MARGIN


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 real CIFAR-10 JPEGs (8 train + 2 test per class): one training step, labels for the kNN gate."""
    return cut_cifar10(tmp_path_factory.mktemp("data") / "small.tar.gz", 8, 2)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, small_archive: Path) -> Path:
    project = make_project(tmp_path_factory.mktemp("project"), small_archive)
    params = yaml.safe_load((project / "params.yaml").read_text())
    # The registry is under test, not the methods: SimCLR needs no teacher (one training, not two),
    # and curation and evaluation skip their optional extras.
    params["pretrain"]["method"] = "simclr"
    params["curate"].update({"selection": {**params["curate"]["selection"], "size": 0}, "map_points": 0})
    params["evaluate"]["linear_probe"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def register_again(project: Path, server: MlflowServer) -> dict:
    """`sslpipe register` with a margin the same model cannot beat: the gate must keep the server's champion."""
    sh(
        project,
        "env",
        f"MLFLOW_TRACKING_URI={server.url}",
        "sslpipe",
        "register",
        "--set",
        f"register.champion_margin={MARGIN}",
    )
    return json.loads((project / "reports/registration.json").read_text())


@pytest.fixture(scope="module")
def on_sqlite(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """The whole pipeline against a server on SQLite: trained (tracked live) and registered there, then again."""
    folder = tmp_path_factory.mktemp("mlflow-sqlite")
    with mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", folder / "server") as server:
        sh(project, "env", f"MLFLOW_TRACKING_URI={server.url}", "sslpipe", "run")
        first = json.loads((project / "reports/registration.json").read_text())
        yield Registered(server, project, first, register_again(project, server))


@pytest.fixture(scope="module")
def on_postgresql(on_sqlite: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """The same trained model registered into a second server, on PostgreSQL: the registry is what differs."""
    folder = tmp_path_factory.mktemp("mlflow-postgresql")
    with postgres_server() as store, mlflow_server(store, folder / "server") as server:
        project = on_sqlite.project
        sh(project, "env", f"MLFLOW_TRACKING_URI={server.url}", "sslpipe", "register")
        first = json.loads((project / "reports/registration.json").read_text())
        yield Registered(server, project, first, register_again(project, server))


@pytest.fixture(params=BACKENDS)
def registered(request: pytest.FixtureRequest) -> Registered:
    return request.getfixturevalue(f"on_{request.param}")


def client_of(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def test_the_run_registers_on_the_server_with_artifacts_in_its_destination(registered: Registered) -> None:
    server, first = registered.server, registered.first
    assert first["tracking_uri"] == server.url
    assert first["version"] == "1" and first["aliases"] == ["challenger", "champion"] and first["promoted_to_champion"]
    client = client_of(server)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and champion.run_id == first["run_id"]
    assert champion.tags["gate_value"] == first["tags"]["gate_value"]
    run = client.get_run(first["run_id"])
    assert run.data.params["training.epochs"] == "1" and {"train_loss", "student.top1"} <= run.data.metrics.keys()
    # Uploaded through the server (mlflow-artifacts:/), stored in its --artifacts-destination.
    assert client.get_experiment(first["experiment_id"]).artifact_location.startswith("mlflow-artifacts:/")
    checkpoints = [p for p in server.artifacts.rglob("model.pt") if first["run_id"] in p.parts]
    assert [p.parts[-2:] for p in checkpoints] == [("checkpoint", "model.pt")]
    logged_model = champion.source.removeprefix("models:/")  # MLflow 3: the version's source is a logged model
    assert [p.name for p in server.artifacts.rglob("*.onnx") if logged_model in p.parts] == ["model.onnx"]
    assert [name for name in LOCAL_STORE if (registered.project / name).exists()] == []


def test_the_training_is_tracked_live_in_the_run_that_register_continues(on_sqlite: Registered) -> None:
    """One run per pipeline execution: the run pretrain opened on the server is the registered version's."""
    from tasks.live_tracking import ROLE_TAG, RunReference

    first = on_sqlite.first
    assert RunReference.read(on_sqlite.project / "models/student") == RunReference(
        on_sqlite.server.url, first["experiment_id"], first["run_id"]
    )
    run = client_of(on_sqlite.server).get_run(first["run_id"])
    assert run.data.tags[ROLE_TAG] == "pretrain"  # opened by the pretrain stage, over HTTP
    losses = client_of(on_sqlite.server).get_metric_history(first["run_id"], "train_loss")
    assert [m.step for m in losses] == [1]  # logged by the training itself, once per epoch


def test_a_second_registration_is_version_2_and_the_gate_decides_on_the_servers_champion(
    registered: Registered,
) -> None:
    """Same model, same score, a margin of 0.5: version 2 is the challenger; the champion (v1) is kept."""
    first, second = registered.first, registered.second
    assert second["version"] == "2" and second["aliases"] == ["challenger"]
    assert not second["promoted_to_champion"]
    assert second["gate_value"] == first["gate_value"]
    assert "champion v1" in second["reason"] and f"margin {MARGIN}" in second["reason"]
    client = client_of(registered.server)
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'")) == ["1", "2"]
    assert len(list(registered.server.artifacts.rglob("*.onnx"))) == 2


def test_sslpipe_serve_serves_the_champion_from_the_server(on_sqlite: Registered, tmp_path: Path) -> None:
    """Serving reads the same API on either backend: checked on one."""
    from PIL import Image

    from ssl_core.onnx_embedder import OnnxEmbedder

    project, cache = on_sqlite.project, tmp_path / "serving"
    images = sorted((project / "data/ingested/images/test").rglob("*.jpg"))[:4]
    answer = served_embeddings(
        project,
        f"models:/{MODEL}@champion",
        images,
        tmp_path / "serve.log",
        "--cache",
        str(cache),
        MLFLOW_TRACKING_URI=on_sqlite.server.url,
    )
    assert answer["model"] == f"models:/{MODEL}@champion"
    assert len(list(cache.rglob("*.onnx"))) == 1  # downloaded from the server
    direct = OnnxEmbedder(project / "models/onnx/model.onnx").embed([Image.open(p) for p in images])
    np.testing.assert_allclose(np.array(answer["embeddings"]), direct, atol=1e-5)
