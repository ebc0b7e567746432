"""One MLflow run per pipeline execution: pretraining opens it and logs live, register continues it.

Real training (a torchvision ResNet-18 on 64 CIFAR-10 images) against a real SQLite store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ssl_core.export import export_onnx
from ssl_core.model_file import load_embedding_model
from ssl_core.onnx_format import OnnxMetadata
from tasks import pretrain, register
from tasks.live_tracking import REGISTERED_TAG, ROLE_TAG, RUN_FILE, RunReference
from tasks.params import parse_params
from tests.datasets import cifar10_archive
from tests.ssl_core.conftest import extract_cifar_folder

EPOCHS, BATCH = 2, 16
TRAIN_PER_CLASS, TEST_PER_CLASS, CLASSES = 8, 4, 8
STEPS_PER_EPOCH = TRAIN_PER_CLASS * CLASSES // BATCH


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 classes: 8 train and 4 test images each, as the ingest stage lays them out."""
    return extract_cifar_folder(
        cifar10_archive(TRAIN_PER_CLASS, TEST_PER_CLASS),
        tmp_path_factory.mktemp("labeled"),
        {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS},
        CLASSES,
    )


def settings(**monitor):
    return parse_params(
        {
            "pretrain": {
                "method": "simclr",
                "backbone": "resnet18",  # torchvision's: cheap at 32 px
                "epochs": EPOCHS,
                "batch_size": BATCH,
                "precision": "fp32",
                "num_workers": 0,
                "monitor": {"knn_bank": 40, "knn_queries": 20, "log_every_steps": 1, **monitor},
            },
        }
    )


@pytest.fixture(scope="module")
def tracked(labeled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A pretraining tracked live in a SQLite store: (model folder, tracking URI)."""
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
        params = settings()
        pretrain.run(params.pretrain, params.data, labeled_folder, root / "student", root / "ckpt", experiment="exp")
    return root / "student", uri


def test_the_training_run_shows_its_steps_epochs_knn_and_system_use(tracked: tuple[Path, str]) -> None:
    student, uri = tracked
    reference = RunReference.read(student)
    assert reference is not None and reference.tracking_uri == uri
    client = MlflowClient(uri)
    run = client.get_run(reference.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "simclr-resnet18"
    assert run.data.tags[ROLE_TAG] == "pretrain"
    assert run.data.params["training.method"] == "simclr" and run.data.params["training.monitor.knn_bank"] == "40"
    steps = client.get_metric_history(run.info.run_id, "step_loss")
    assert [m.step for m in steps] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    history = json.loads((student / "history.json").read_text())["epochs"]
    per_epoch = {"train_loss": "loss", "embedding_std": "embedding_std", "knn_top1_monitor": "knn_top1_monitor"}
    for metric, key in per_epoch.items():
        logged = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in logged] == [1, 2], metric
        assert [m.value for m in logged] == pytest.approx([epoch[key] for epoch in history]), metric
    assert all(0 <= epoch["knn_top1_monitor"] <= 1 for epoch in history)
    assert any(name.startswith("system/") for name in run.data.metrics), sorted(run.data.metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "training")] == ["training/training.png"]


def test_register_continues_the_training_run_then_nests_a_second_registration(
    tracked: tuple[Path, str], labeled_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    student, uri = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    training_run = RunReference.read(student).run_id
    backbone, info = load_embedding_model(student / "model.pt")
    onnx_dir = tmp_path / "onnx"
    export_onnx(backbone.eval(), OnnxMetadata.from_info(info), onnx_dir / "model.onnx", opset=18)
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    metrics = {"student": {"rankme": 50.0, "top1": 0.3}, "random_init": {"rankme": 20.0, "top1": 0.2}, "k": 20}
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    params = parse_params({"register": {"experiment": "exp", "model_name": "emb"}})

    def registered(out: str) -> dict:
        return register.run(
            params.registry, labeled_folder, student, evaluation, onnx_dir, tmp_path / out, project_dir=tmp_path
        )

    first = registered("first.json")
    client = MlflowClient(uri)
    assert first["run_id"] == training_run  # the same run: curves, then evaluation and model
    assert client.get_model_version("emb", first["version"]).run_id == training_run
    run = client.get_run(training_run)
    assert run.data.tags[REGISTERED_TAG] == first["version"] and "top1" in str(run.data.metrics)
    assert len(client.get_metric_history(training_run, "train_loss")) == EPOCHS  # not logged twice

    second = registered("second.json")  # e.g. register's params changed, training cached
    assert second["run_id"] != training_run
    assert client.get_run(second["run_id"]).data.tags[MLFLOW_PARENT_RUN_ID] == training_run


def test_training_goes_on_when_the_tracking_server_is_down(
    labeled_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    params = settings(knn_bank=0)
    with caplog.at_level(logging.WARNING, logger="tasks.live_tracking"):
        result = pretrain.run(
            params.pretrain, params.data, labeled_folder, tmp_path / "out", tmp_path / "ckpt", experiment="exp"
        )
    assert result.model_path.is_file() and len(result.history.epochs) == EPOCHS
    assert not (tmp_path / "out" / RUN_FILE).exists()
    assert "training without live tracking" in caplog.text
