"""Stage 6, register: log the run to MLflow and register the ONNX embedder.

The run is the one the pretrain stage opened and tracked live (:func:`open_run`,
:mod:`tasks.live_tracking`): one run per pipeline execution. It holds the
configuration the student was trained with (its ``config.json``, written by the
pretrain stage: what produced the model, not what params.yaml says now), the
evaluation's metrics (label-free ones always; kNN and linear probe where there
were labels), the per-epoch training curve, the
PyTorch checkpoint (``checkpoint/model.pt``, so the model can later serve as a
distillation teacher) and the ONNX model logged with the ONNX flavor and a
signature. The registered version is that ONNX model: it is what serving deploys.
Data curated by the curate stage adds its ``report.json`` and ``report.html`` (under
``curation/``) and its counts as ``curation_*`` metrics (``curation_kept``,
``curation_dropped_<reason>``, ``curation_quality_<issue>``, ...).

Aliases: the new version becomes ``challenger``; ``champion`` moves to it only if
its gate metric (``register.metric``: kNN top-1 with labels, RankMe without; see
:mod:`tasks.promotion`) beats the current champion's value of the same metric by
``register.champion_margin``.
Version tags: git commit, dataset manifest hash, hash of the logged params, each gate
metric the evaluation produced, ``gate_metric`` / ``gate_value``: what decided, and
``promotion_peers`` / ``promotion_settled``, which make registrations running at the
same time agree on the champion (:mod:`tasks.promotion`).
Lineage: the manifest is the run's input dataset (MLflow dataset tracking: digest and
source), the ONNX model carries an input example, and the version's description says
how the model was trained and scored and what the gate decided.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import mlflow.onnx
import numpy as np
import onnx
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ssl_core.manifest import MANIFEST_NAME, sha256_file
from ssl_core.onnx_format import INPUT_NAME, OUTPUT_NAME, onnx_session, read_onnx_metadata
from tasks.errors import UserError
from tasks.layout import CURATION_PAGE, CURATION_REPORT, INGEST_REPORT, METRICS_FILE, ONNX_FILE
from tasks.live_tracking import REGISTERED_TAG, RunReference, flatten
from tasks.mlflow_setup import connect, ensure_experiment, tracking_uri
from tasks.model_uris import CHECKPOINT_ARTIFACT
from tasks.params import Params, RegisterParams
from tasks.promotion import (
    GATE_TAG,
    PEERS_TAG,
    PROMOTION_ROUNDS,
    SETTLED_TAG,
    Decision,
    GateMetric,
    GateMetricMissingError,
    RegisteredVersion,
    champion_target,
    choose_gate_metric,
    decide,
    metric_tags,
    outcome,
    peers_in_progress,
    registered_together,
    tag_value,
)

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"


class RegistrationError(UserError):
    """The registration cannot be decided as configured; the message says what to change."""


def main(params: Params, args: argparse.Namespace) -> None:
    run(params.registry, args.data, args.model, args.evaluation, args.onnx, args.out)


def run(
    register: RegisterParams,
    ingested: Path,
    student_dir: Path,
    evaluation_dir: Path,
    onnx_dir: Path,
    out_path: Path,
    project_dir: Path = Path("."),
) -> dict[str, Any]:
    """Logs, registers and aliases; writes a summary to ``out_path``."""
    client = connect(project_dir)
    experiment_id = ensure_experiment(register.experiment, project_dir)
    metrics = json.loads((evaluation_dir / METRICS_FILE).read_text())
    try:
        gate = choose_gate_metric(register.metric, metrics)
    except GateMetricMissingError as error:
        raise RegistrationError(str(error)) from None
    gate_value = gate.value(metrics)
    history = json.loads((student_dir / "history.json").read_text())
    trained_with = json.loads((student_dir / "config.json").read_text())
    logged_params = flatten({**trained_with, "register": register.model_dump(mode="json")})
    tags = {
        "git_commit": git_commit(project_dir),
        "dataset_manifest_sha256": sha256_file(ingested / MANIFEST_NAME),
        "params_hash": hashlib.sha256(json.dumps(logged_params, sort_keys=True).encode()).hexdigest()[:16],
        **metric_tags(metrics),
        GATE_TAG: gate.name,
        "gate_value": f"{gate_value:.6f}",
    }
    curation_report = ingested / CURATION_REPORT
    curation = json.loads(curation_report.read_text()) if curation_report.is_file() else None
    name = register.model_name
    training = trained_with["training"]
    run_name = f"{training['method']}-{training['backbone']}"
    run, continued = open_run(client, student_dir, experiment_id, run_name, project_dir)
    with run:
        mlflow.set_tags(tags)
        log_dataset(ingested)
        mlflow.log_params(logged_params)
        mlflow.log_metrics(flat_metrics(metrics))
        if not continued:  # the training's live run has its curves already
            for epoch in history["epochs"]:
                mlflow.log_metrics(
                    {"train_loss": epoch["loss"], "embedding_std": epoch["embedding_std"]}, step=epoch["epoch"]
                )
        mlflow.log_artifacts(str(student_dir), CHECKPOINT_ARTIFACT)
        mlflow.log_artifacts(str(evaluation_dir), "evaluation")
        if (ingested / INGEST_REPORT).is_file():
            mlflow.log_artifact(str(ingested / INGEST_REPORT), "data")
        if curation is not None:
            mlflow.log_metrics(curation_metrics(curation))
            for page in (CURATION_REPORT, CURATION_PAGE):
                if (ingested / page).is_file():
                    mlflow.log_artifact(str(ingested / page), "curation")
        model_info = log_onnx(onnx_dir / ONNX_FILE, name)
        run_id = run.info.run_id

    version = str(model_info.registered_model_version)
    client.set_tag(run_id, REGISTERED_TAG, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    promoted, reason = maybe_promote(client, name, version, gate, gate_value, register.champion_margin)
    client.update_model_version(name, version, description=describe_version(trained_with, metrics, reason))
    summary = {
        "tracking_uri": mlflow.get_tracking_uri(),
        "experiment": register.experiment,
        "experiment_id": experiment_id,
        "run_id": run_id,
        "model_name": name,
        "version": version,
        "aliases": sorted(client.get_model_version(name, version).aliases),
        "gate_metric": gate.name,
        "gate_value": gate_value,
        "promoted_to_champion": promoted,
        "reason": reason,
        "tags": tags,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("Registered %s version %s (%s).", name, version, reason)
    return summary


def open_run(
    client: MlflowClient, student_dir: Path, experiment_id: str, run_name: str, project_dir: Path
) -> tuple[mlflow.ActiveRun, bool]:
    """The MLflow run this registration logs into, and whether it continues the training's live run.

    The pretrain stage's run (``mlflow_run.json``, :mod:`tasks.live_tracking`) is
    continued when it is in this tracking store and experiment and has no
    registered version yet: one run per pipeline execution. A student registered
    before (register's params changed, the training was cached) gets a new run
    nested under its training run; a student trained elsewhere or untracked gets
    a run of its own.
    """
    reference = RunReference.read(student_dir)
    training_run = None
    if reference is not None and (reference.tracking_uri, reference.experiment_id) == (
        tracking_uri(project_dir),
        experiment_id,
    ):
        try:
            training_run = client.get_run(reference.run_id)
        except MlflowException:
            logger.info("The training's MLflow run %s is gone: registering in a new run.", reference.run_id)
    if training_run is None or training_run.info.lifecycle_stage != "active":
        return mlflow.start_run(experiment_id=experiment_id, run_name=run_name), False
    if REGISTERED_TAG not in training_run.data.tags:
        return mlflow.start_run(run_id=reference.run_id), True
    nested = {MLFLOW_PARENT_RUN_ID: reference.run_id}
    return mlflow.start_run(experiment_id=experiment_id, run_name=f"{run_name} (registered again)", tags=nested), False


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
        input_example=example,
        registered_model_name=registered_name,
        save_as_external_data=False,
        metadata={
            "image_size": metadata.image_size,
            "mean": list(metadata.mean),
            "std": list(metadata.std),
            "embedding_dim": metadata.embedding_dim,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
        },
    )


def maybe_promote(client, name: str, version: str, gate: GateMetric, value: float, margin: float) -> tuple[bool, str]:
    """Moves ``champion`` to ``version`` if its ``gate`` metric beats the champion's by ``margin``.

    Safe when registrations run at the same time: the alias is settled by the rule
    in :mod:`tasks.promotion` ("Registrations at the same time"), which ends on the
    best of them whatever the order of their writes. Returns whether ``version``
    ends champion, and why.
    """

    def champion_now() -> RegisteredVersion | None:
        try:
            return RegisteredVersion.of(client.get_model_version_by_alias(name, CHAMPION))
        except MlflowException:
            return None

    def versions_now() -> dict[str, RegisteredVersion]:
        found = client.search_model_versions(f"name = '{name}'")
        return {str(v.version): RegisteredVersion.of(v) for v in found}

    # What others judge it on, tagged before anything is read (register tags these already).
    client.set_model_version_tag(name, version, gate.name, tag_value(value))
    client.set_model_version_tag(name, version, GATE_TAG, gate.name)
    versions = versions_now()
    client.set_model_version_tag(name, version, PEERS_TAG, peers_in_progress(versions.values(), versions[version]))
    decision, held = None, False
    for _ in range(PROMOTION_ROUNDS):
        # The champion first, then the versions: every version written champion was tagged before.
        champion = champion_now()
        current = None if champion is None else champion.version
        if decision is None and current == version:  # a registration at the same time was quicker
            decision = Decision(True, "already champion: promoted by a registration at the same time, as the best")
        elif decision is None:
            decision = decide(gate, value, current, {} if champion is None else champion.tags, margin)
        held |= current == version
        target = champion_target(gate, margin, champion, registered_together(versions_now().values(), version))
        if target == current:
            break
        client.set_registered_model_alias(name, CHAMPION, target)
        held |= target == version
    else:
        champion = champion_now()
        left = "none" if champion is None else f"v{champion.version}"
        logger.warning("The champion of %s still moved after %d rounds: left at %s.", name, PROMOTION_ROUNDS, left)
    client.set_model_version_tag(name, version, SETTLED_TAG, "true")
    return outcome(gate, version, decision, champion, held)


def log_dataset(data_dir: Path) -> None:
    """The manifest as the run's input (MLflow dataset tracking): its rows, digest and source, for lineage."""
    manifest = data_dir / MANIFEST_NAME
    frame = pd.read_csv(manifest)
    # An explicit source: a bare path string is ambiguous to MLflow's source registry (it warns).
    source = LocalArtifactDatasetSource(manifest.resolve().as_uri())
    with warnings.catch_warnings():
        # MLflow warns (when it infers the schema) that integer columns cannot hold
        # missing values; a manifest has none.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=source, name=data_dir.name)
        mlflow.log_input(dataset, context="training")


def describe_version(trained_with: dict[str, Any], metrics: dict[str, Any], decision: str) -> str:
    """The registered version's description: how it was trained, how it scored, what the gate decided."""
    training = trained_with["training"]
    trained = (
        f"{training['method']} on {training['backbone']}, {training['epochs']} epochs"
        + (f", batch {training['batch_size']}" if "batch_size" in training else "")
        + (f", teacher {trained_with['teacher']}" if trained_with.get("teacher") else "")
    )
    student, baseline = metrics["student"], metrics["random_init"]
    scores = [f"RankMe {student['rankme']:.1f} (random init {baseline['rankme']:.1f})"] if "rankme" in student else []
    if "top1" in student:
        scores.insert(0, f"kNN top-1 {student['top1']:.4f} (random init {baseline['top1']:.4f})")
    if "linear_top1" in student:
        scores.insert(1, f"linear probe {student['linear_top1']:.4f}")
    if "top1" not in student:
        evaluated = "without labels (label-free metrics)"
    else:
        evaluated = f"on {metrics['num_queries']} labeled queries" if "num_queries" in metrics else "with labels"
    return f"Trained: {trained}. Scored {evaluated}: {'; '.join(scores)}. Champion gate: {decision}."


def git_commit(project_dir: Path) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_dir, capture_output=True, text=True
    ).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


def curation_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The counts of curate's report.json as ``curation_<count>``, nested ones joined by ``_``.

    e.g. ``{"kept": 290, "dropped": {"leakage": 3}}`` -> ``curation_kept``, ``curation_dropped_leakage``.
    """
    return {
        "curation_" + key.replace(".", "_"): float(value)
        for key, value in flatten(report.get("counts", {})).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k.replace("/", "_"): float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
