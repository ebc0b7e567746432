"""MLflow connection: the project's SQLite file by default, any server by env var.

``MLFLOW_TRACKING_URI`` picks the tracking server (e.g. an MLflow server backed by
Postgres and an object store for teams); without it runs and the model registry
live in ``mlflow.db`` in the project folder, with artifacts in ``mlartifacts/``.
A DVC experiment run in a temporary copy of the project (``dvc exp run --temp`` or
``--queue``) registers into the project's store too, not into the throwaway copy.

MLflow itself is imported on the first connection: a stage that imports this module
for an optional registry lookup (curate's ``models:/`` embedder) skips about a second
of MLflow import when it makes none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


# Where DVC puts the copies of the project that temporary and queued experiments run in.
DVC_EXPERIMENT_COPIES = (".dvc", "tmp", "exps")


def store_folder(project_dir: Path = Path(".")) -> Path:
    """The folder of the project's own store: ``project_dir``, or the project a DVC experiment copy belongs to."""
    parts = project_dir.resolve().parts
    for i in range(len(parts) - len(DVC_EXPERIMENT_COPIES) + 1):
        if parts[i : i + len(DVC_EXPERIMENT_COPIES)] == DVC_EXPERIMENT_COPIES:
            return Path(*parts[:i])
    return project_dir.resolve()


def project_db_uri(project_dir: Path = Path(".")) -> str:
    """The project's own SQLite store, used when ``MLFLOW_TRACKING_URI`` names none."""
    return f"sqlite:///{store_folder(project_dir) / DEFAULT_DB}"


def tracking_uri(project_dir: Path = Path(".")) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or project_db_uri(project_dir)


def web_links(registration: dict) -> dict[str, str]:
    """Links to a registration's run and model version (``reports/registration.json``), when its store is a server.

    A tracking server is its own web UI; a local store (SQLite, a folder) has no address: it is opened
    with :func:`local_ui_command`.
    """
    if not registration["tracking_uri"].startswith(("http://", "https://")):
        return {}
    base = registration["tracking_uri"].rstrip("/")
    name, version = registration["model_name"], registration["version"]
    return {
        "mlflow-run": f"{base}/#/experiments/{registration['experiment_id']}/runs/{registration['run_id']}",
        "mlflow-model-version": f"{base}/#/models/{name}/versions/{version}",
    }


def local_ui_command(store_uri: str) -> str:
    """The command that shows a local store in MLflow's web UI."""
    return f"mlflow ui --backend-store-uri {store_uri}"


def connect(project_dir: Path = Path(".")) -> MlflowClient:
    """Points mlflow at the tracking URI and returns a client for the registry."""
    import mlflow

    uri = tracking_uri(project_dir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str, project_dir: Path = Path(".")) -> str:
    """Experiment id of ``name``, creating it with artifacts inside the project when local."""
    client = connect(project_dir)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    # Compared by URI, not by whether the variable is set: mlflow.set_tracking_uri (in
    # connect) sets MLFLOW_TRACKING_URI itself, which would send the artifacts of the
    # project's own store to ./mlruns in whatever folder the process runs in.
    if tracking_uri(project_dir) == project_db_uri(project_dir):
        artifact_location = (store_folder(project_dir) / DEFAULT_ARTIFACTS).as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)
