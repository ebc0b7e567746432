"""Stage 6, register: log the run to MLflow and register the ONNX embedder.

One MLflow run per registration holds the resolved params, the kNN metrics, the
per-epoch training curve, the PyTorch checkpoint (``checkpoint/model.pt``, so the
model can later serve as a distillation teacher) and the ONNX model logged with
the ONNX flavor and a signature. The registered version is that ONNX model: it is
what serving deploys.

Aliases: the new version becomes ``challenger``; ``champion`` moves to it only if
its kNN top-1 beats the current champion's by ``register.champion_margin``.
Version tags: git commit, dataset manifest hash, params hash, kNN top-1.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import numpy as np
import onnx
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from ssl_core.export import INPUT_NAME, OUTPUT_NAME, onnx_session, read_onnx_metadata
from ssl_core.manifest import MANIFEST_NAME, sha256_file
from tasks.layout import MODEL_FILE, ONNX_FILE
from tasks.mlflow_setup import connect, ensure_experiment
from tasks.params import Params, params_hash

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
METRIC_TAG = "knn_top1"
CHECKPOINT_ARTIFACT = "checkpoint"


class RegistryError(RuntimeError):
    """A model URI cannot be resolved; the message says what to do."""


def run(params: Params, ingested: Path, student_dir: Path, evaluation_dir: Path, onnx_dir: Path,
        out_path: Path, project_dir: Path = Path(".")) -> dict[str, Any]:
    """Logs, registers and aliases; writes a summary to ``out_path``."""
    client = connect(project_dir)
    experiment_id = ensure_experiment(params.registry.experiment, project_dir)
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    history = json.loads((student_dir / "history.json").read_text())
    tags = {
        "git_commit": git_commit(project_dir),
        "dataset_manifest_sha256": sha256_file(ingested / MANIFEST_NAME),
        "params_hash": params_hash(params),
        METRIC_TAG: f"{metrics['student']['top1']:.6f}",
    }
    name = params.registry.model_name
    with mlflow.start_run(experiment_id=experiment_id,
                          run_name=f"{params.pretrain.method}-{params.pretrain.backbone}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params(flatten(params.model_dump(mode="json", by_alias=True)))
        mlflow.log_metrics(flat_metrics(metrics))
        for epoch in history["epochs"]:
            mlflow.log_metrics({"train_loss": epoch["loss"], "embedding_std": epoch["embedding_std"]}, step=epoch["epoch"])
        mlflow.log_artifacts(str(student_dir), CHECKPOINT_ARTIFACT)
        mlflow.log_artifacts(str(evaluation_dir), "evaluation")
        mlflow.log_artifact(str(ingested / "ingest_report.json"), "data")
        model_info = log_onnx(onnx_dir / ONNX_FILE, name)
        run_id = run.info.run_id

    version = str(model_info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    promoted, reason = maybe_promote(client, name, version, metrics["student"]["top1"], params.registry.champion_margin)
    summary = {
        "tracking_uri": mlflow.get_tracking_uri(),
        "experiment": params.registry.experiment,
        "run_id": run_id,
        "model_name": name,
        "version": version,
        "aliases": sorted(client.get_model_version(name, version).aliases),
        "promoted_to_champion": promoted,
        "reason": reason,
        "tags": tags,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("Registered %s version %s (%s).", name, version, reason)
    return summary


def log_onnx(path: Path, registered_name: str):
    """Logs the ONNX file with the ONNX flavor, a signature and its metadata."""
    metadata = read_onnx_metadata(path)
    example = np.zeros((2, 3, metadata.image_size, metadata.image_size), dtype=np.float32)
    output = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: example})[0]
    signature = infer_signature(example, output)
    return mlflow.onnx.log_model(
        onnx.load(str(path)),
        name="onnx-embedder",
        signature=signature,
        registered_model_name=registered_name,
        save_as_external_data=False,
        metadata={"image_size": metadata.image_size, "mean": list(metadata.mean), "std": list(metadata.std),
                  "embedding_dim": metadata.embedding_dim, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME},
    )


def maybe_promote(client, name: str, version: str, top1: float, margin: float) -> tuple[bool, str]:
    """Moves ``champion`` to ``version`` if it beats the champion by ``margin``."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, "first version: no champion yet"
    champion_top1 = float(champion.tags.get(METRIC_TAG, "-inf"))
    if top1 > champion_top1 + margin:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, f"kNN top-1 {top1:.4f} > champion v{champion.version} {champion_top1:.4f} + margin {margin}"
    return False, f"kNN top-1 {top1:.4f} <= champion v{champion.version} {champion_top1:.4f} + margin {margin}"


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri!r} is not a model registry URI (models:/<name>@<alias> or models:/<name>/<version>).")
    body = uri.removeprefix("models:/").strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return name, None, version
    raise RegistryError(f"{uri!r}: name an alias or version, e.g. models:/{body}@champion.")


def resolve_version(uri: str, project_dir: Path = Path(".")):
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
    version = resolve_version(uri, project_dir)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=f"{CHECKPOINT_ARTIFACT}/{MODEL_FILE}", dst_path=tmp)
        except (MlflowException, OSError) as error:
            raise RegistryError(f"{uri}: its run {version.run_id} has no {CHECKPOINT_ARTIFACT}/{MODEL_FILE} ({error}).") from None
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, destination)
    return destination


def download_onnx(uri: str, destination_dir: Path, project_dir: Path = Path(".")) -> Path:
    """The ONNX file of a registered version (by alias or number)."""
    version = resolve_version(uri, project_dir)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(destination_dir)))
    candidates = sorted(local.rglob("*.onnx")) if local.is_dir() else [local]
    if not candidates:
        raise RegistryError(f"{uri}: version {version.version} holds no .onnx file.")
    return candidates[0]


def git_commit(project_dir: Path) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_dir,
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k.replace("/", "_"): float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
