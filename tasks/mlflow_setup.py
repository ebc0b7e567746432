"""MLflow connection: the project's SQLite file by default, any server by env var.

``MLFLOW_TRACKING_URI`` picks the tracking server (e.g. an MLflow server backed by
Postgres and an object store for teams); without it runs and the model registry
live in ``mlflow.db`` in the project folder, with artifacts in ``mlartifacts/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def project_db_uri(project_dir: Path = Path(".")) -> str:
    """The project's own SQLite store, used when ``MLFLOW_TRACKING_URI`` names none."""
    return f"sqlite:///{(project_dir / DEFAULT_DB).resolve()}"


def tracking_uri(project_dir: Path = Path(".")) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or project_db_uri(project_dir)


def connect(project_dir: Path = Path(".")) -> MlflowClient:
    """Points mlflow at the tracking URI and returns a client for the registry."""
    uri = tracking_uri(project_dir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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
        artifact_location = (project_dir / DEFAULT_ARTIFACTS).resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)
