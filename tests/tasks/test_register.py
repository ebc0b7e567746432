"""The register stage on a real (SQLite) MLflow: what it logs and tags, and champion promotion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from ssl_core.augment import Normalization
from ssl_core.export import export_onnx
from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, write_manifest
from ssl_core.onnx_format import OnnxMetadata
from tasks import register
from tasks.gate_metrics import GATE_METRICS
from tasks.mlflow_setup import project_db_uri
from tasks.params import RegisterParams
from tasks.register import CHAMPION, RegistrationError, maybe_promote

KNN = GATE_METRICS["knn_top1"]


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def add_version(client: MlflowClient, name: str, top1: float, tmp_path: Path) -> str:
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=(tmp_path / "artifact").as_uri()).version
    client.set_model_version_tag(name, version, KNN.name, f"{top1:.6f}")
    return str(version)


def test_champion_moves_only_when_beaten_by_the_margin(client: MlflowClient, tmp_path: Path) -> None:
    v1 = add_version(client, "m", 0.50, tmp_path)
    assert maybe_promote(client, "m", v1, KNN, 0.50, margin=0.01)[0]  # first version always becomes champion
    v2 = add_version(client, "m", 0.505, tmp_path)
    promoted, reason = maybe_promote(client, "m", v2, KNN, 0.505, margin=0.01)
    assert not promoted and "margin" in reason
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == v1
    v3 = add_version(client, "m", 0.53, tmp_path)
    assert maybe_promote(client, "m", v3, KNN, 0.53, margin=0.01)[0]
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == v3


# --- the stage ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported embedder: register reads its metadata and runs it once for the signature."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    norm = Normalization()
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(backbone, OnnxMetadata(32, norm.mean, norm.std, 8, "tiny", "simclr"), out / "model.onnx", opset=18)
    return out


def stage_inputs(root: Path, config: dict, top1: float | None, rankme: float = 100.0) -> dict[str, Path]:
    """What the earlier stages leave: ingested data, a student folder, an evaluation folder."""
    ingested, student, evaluation = root / "ingested", root / "student", root / "evaluate"
    for folder in (ingested, student, evaluation):
        folder.mkdir(parents=True, exist_ok=True)
    write_manifest([ManifestRecord("images/0.png", "0" * 64, "cat", "train", 32, 32)], ingested / MANIFEST_NAME)
    (ingested / "ingest_report.json").write_text("{}")
    (student / "config.json").write_text(json.dumps(config))
    (student / "history.json").write_text(json.dumps({"epochs": [{"epoch": 1, "loss": 5.0, "embedding_std": 0.1}]}))
    knn = {} if top1 is None else {"top1": top1, "top5": 0.9}
    baseline = {"rankme": 20.0, **({} if top1 is None else {"top1": 0.2, "top5": 0.6})}
    metrics = {"student": {"rankme": rankme, **knn}, "random_init": baseline, "k": 20}
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    return {"ingested": ingested, "student_dir": student, "evaluation_dir": evaluation}


def trained_with(epochs: int) -> dict:
    """A student's config.json, as the pretrain stage writes it."""
    return {
        "training": {"method": "simclr", "backbone": "tiny", "epochs": epochs},
        "data": {"image_size": 32},
        "lr": 0.24,
        "teacher": None,
    }


def test_register_logs_the_students_config_and_tags_its_hash(
    tmp_path: Path, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The project's own store, as without the variable (mlflow.set_tracking_uri sets it anyway;
    # monkeypatch removes it again after the test).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project_db_uri(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = RegisterParams(model_name="emb")

    def registered(name: str, config: dict, top1: float) -> dict:
        inputs = stage_inputs(tmp_path / name, config, top1)
        return register.run(
            settings, onnx_dir=onnx_dir, out_path=tmp_path / f"{name}.json", project_dir=tmp_path, **inputs
        )

    first = registered("first", trained_with(epochs=2), top1=0.5)
    assert json.loads((tmp_path / "first.json").read_text()) == first
    assert first["version"] == "1" and first["promoted_to_champion"]
    assert first["aliases"] == ["challenger", "champion"]
    # What produced the model, read from its config.json, not what params.yaml says now.
    run = MlflowClient(first["tracking_uri"]).get_run(first["run_id"])
    assert run.data.params["training.epochs"] == "2" and run.data.params["training.method"] == "simclr"
    assert run.data.params["register.model_name"] == "emb"
    assert run.info.run_name == "simclr-tiny"
    # Ingested data, no curation report: its ingest report, nothing of curation.
    assert not [key for key in run.data.metrics if key.startswith("curation_")]
    artifacts = MlflowClient(first["tracking_uri"]).list_artifacts(first["run_id"], "data")
    assert [a.path for a in artifacts] == ["data/ingest_report.json"]
    assert not MlflowClient(first["tracking_uri"]).list_artifacts(first["run_id"], "curation")
    # Lineage: the manifest is the run's input dataset; the version says how it was trained and scored.
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "ingested" and dataset_input.tags[0].value == "training"
    assert json.loads(dataset_input.dataset.source)["uri"].endswith("first/ingested/manifest.csv")
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 1
    description = MlflowClient(first["tracking_uri"]).get_model_version("emb", "1").description
    assert description == (
        "Trained: simclr on tiny, 2 epochs. Scored with labels: kNN top-1 0.5000 "
        "(random init 0.2000); RankMe 100.0 (random init 20.0). Champion gate: first version: no champion yet."
    )
    # Artifacts go to the project's mlartifacts/, never to the folder the process runs in.
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert not any(elsewhere.iterdir())

    same = registered("same", trained_with(epochs=2), top1=0.5)
    other = registered("other", trained_with(epochs=3), top1=0.5)
    assert same["tags"]["params_hash"] == first["tags"]["params_hash"]  # stable
    assert other["tags"]["params_hash"] != first["tags"]["params_hash"]  # follows the config
    assert not same["promoted_to_champion"] and same["aliases"] == ["challenger"]  # no better than the champion
    assert other["aliases"] == ["challenger"]
    client = MlflowClient(first["tracking_uri"])
    assert client.get_model_version("emb", same["version"]).aliases == []  # the challenger moved on
    version = client.get_model_version("emb", other["version"])
    assert version.tags["params_hash"] == other["tags"]["params_hash"] and version.tags["knn_top1"] == "0.500000"
    assert version.tags["gate_metric"] == "knn_top1" and version.tags["rankme"] == "100.000000"


def test_without_labels_rankme_decides_and_is_compared_only_with_rankme(
    tmp_path: Path, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project_db_uri(tmp_path))

    def registered(name: str, top1: float | None, rankme: float, metric: str = "auto") -> dict:
        inputs = stage_inputs(tmp_path / name, trained_with(epochs=2), top1, rankme)
        settings = RegisterParams(model_name="emb", metric=metric)
        return register.run(
            settings, onnx_dir=onnx_dir, out_path=tmp_path / f"{name}.json", project_dir=tmp_path, **inputs
        )

    labeled = registered("labeled", top1=0.6, rankme=100.0)
    assert labeled["gate_metric"] == "knn_top1" and labeled["promoted_to_champion"]
    # No labels: RankMe decides, against the champion's RankMe (not its kNN 0.6), and the switch is reported.
    richer = registered("richer", top1=None, rankme=150.0)
    assert richer["gate_metric"] == "rankme" and richer["gate_value"] == 150.0 and richer["promoted_to_champion"]
    assert "RankMe 150.0000 > champion v1 100.0000" in richer["reason"] and "promoted on knn_top1" in richer["reason"]
    poorer = registered("poorer", top1=None, rankme=120.0)
    assert not poorer["promoted_to_champion"] and "RankMe 120.0000 <= champion v2 150.0000" in poorer["reason"]
    client = MlflowClient(richer["tracking_uri"])
    tags = client.get_model_version("emb", richer["version"]).tags
    assert tags["gate_metric"] == "rankme" and tags["gate_value"] == "150.000000" and "knn_top1" not in tags
    assert client.get_run(richer["run_id"]).data.metrics["student.rankme"] == 150.0
    # A metric the evaluation lacks fails before anything is logged, saying what it has.
    experiment = client.get_run(richer["run_id"]).info.experiment_id
    runs_before = len(client.search_runs([experiment]))
    with pytest.raises(RegistrationError, match="register.metric = 'knn_top1'.*it has rankme"):
        registered("knn-without-labels", top1=None, rankme=300.0, metric="knn_top1")
    assert len(client.search_runs([experiment])) == runs_before


def test_register_logs_the_curation_report_and_counts(
    tmp_path: Path, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project_db_uri(tmp_path))
    inputs = stage_inputs(tmp_path / "curated", trained_with(epochs=2), top1=0.5)
    curated = inputs["ingested"]
    (curated / "ingest_report.json").unlink()  # a data folder without one registers too
    counts = {
        "images": 300,
        "kept": 290,
        "dropped": {"exact_duplicates": 4, "leakage": 3, "dark": 3},
        "exact_duplicate_groups": 4,
        "near_duplicate_groups": 2,
        "leaked_test_images": 3,
        "quality": {"dark": 3, "blurry": 7},
        "outliers": 1,
    }
    (curated / "report.json").write_text(json.dumps({"leakage": [], "counts": counts}))
    (curated / "report.html").write_text("<html><body>curation</body></html>")
    metrics = {
        "student": {"top1": 0.5, "top5": 0.9, "top1_without_leaks": 0.48, "top5_without_leaks": 0.88},
        "random_init": {"top1": 0.2, "top5": 0.6, "top1_without_leaks": 0.19, "top5_without_leaks": 0.58},
        "num_leaked_queries": 3,
        "k": 20,
    }
    (inputs["evaluation_dir"] / "metrics.json").write_text(json.dumps(metrics))

    summary = register.run(
        RegisterParams(model_name="emb"),
        onnx_dir=onnx_dir,
        out_path=tmp_path / "r.json",
        project_dir=tmp_path,
        **inputs,
    )

    client = MlflowClient(summary["tracking_uri"])
    logged = client.get_run(summary["run_id"]).data.metrics
    assert {k: v for k, v in logged.items() if k.startswith("curation_")} == {
        "curation_images": 300,
        "curation_kept": 290,
        "curation_dropped_exact_duplicates": 4,
        "curation_dropped_leakage": 3,
        "curation_dropped_dark": 3,
        "curation_exact_duplicate_groups": 4,
        "curation_near_duplicate_groups": 2,
        "curation_leaked_test_images": 3,
        "curation_quality_dark": 3,
        "curation_quality_blurry": 7,
        "curation_outliers": 1,
    }
    assert logged["student.top1_without_leaks"] == 0.48 and logged["random_init.top5_without_leaks"] == 0.58
    assert logged["num_leaked_queries"] == 3
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"], "curation")}
    assert artifacts == {"curation/report.json", "curation/report.html"}
    assert not client.list_artifacts(summary["run_id"], "data")
