"""``models:/`` URIs: what the MLflow model registry holds, resolved and downloaded.

``models:/<name>@<alias>`` or ``models:/<name>/<version>``. The teacher stage takes
the PyTorch checkpoint logged with a registered version (to distill from it); the
server takes its ONNX model.

MLflow is imported where a URI is resolved, not with this module (nor with
:mod:`tasks.mlflow_setup`): the curate stage imports it for its optional ``models:/``
embedder and would otherwise pay about a second of MLflow import on every run that
names none.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import UserError
from tasks.layout import MODEL_FILE
from tasks.mlflow_setup import connect

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

MODELS_PREFIX = "models:/"
# Where the register stage logs the student's model folder in its run.
CHECKPOINT_ARTIFACT = "checkpoint"


class RegistryError(UserError):
    """A model URI cannot be resolved; the message says what to do."""


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    if not uri.startswith(MODELS_PREFIX):
        raise RegistryError(
            f"{uri!r} is not a model registry URI (models:/<name>@<alias> or models:/<name>/<version>)."
        )
    body = uri.removeprefix(MODELS_PREFIX).strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return name, None, version
    raise RegistryError(f"{uri!r}: name an alias or version, e.g. models:/{body}@champion.")


def resolve_version(uri: str, project_dir: Path = Path(".")) -> ModelVersion:
    """The registered version ``uri`` names, from the project's MLflow store (or ``MLFLOW_TRACKING_URI``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(uri)
    client = connect(project_dir)
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as error:
        raise RegistryError(
            f"{uri}: not found in the MLflow registry at {mlflow.get_tracking_uri()} "
            f"({error.message.splitlines()[0]}). Run the register stage first or check the name/alias."
        ) from None


def download_checkpoint(uri: str, destination: Path, project_dir: Path = Path(".")) -> Path:
    """The PyTorch ``model.pt`` logged with the run behind a registered version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    version = resolve_version(uri, project_dir)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=f"{CHECKPOINT_ARTIFACT}/{MODEL_FILE}", dst_path=tmp
            )
        except (MlflowException, OSError) as error:
            raise RegistryError(
                f"{uri}: its run {version.run_id} has no {CHECKPOINT_ARTIFACT}/{MODEL_FILE} ({error})."
            ) from None
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, destination)
    return destination


def download_onnx(uri: str, destination_dir: Path, project_dir: Path = Path(".")) -> Path:
    """The ONNX file of a registered version (by alias or number)."""
    import mlflow

    version = resolve_version(uri, project_dir)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(destination_dir)))
    candidates = sorted(local.rglob("*.onnx")) if local.is_dir() else [local]
    if not candidates:
        raise RegistryError(f"{uri}: version {version.version} holds no .onnx file.")
    return candidates[0]
