"""Evaluate: kNN of student vs random init on real images; clear errors without labels."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from tasks.evaluate import EvaluationError, run
from tasks.ingest import run as ingest
from tasks.params import DataParams, EvaluateParams, IngestParams

FAST = EvaluateParams(k=20, num_workers=0, precision="fp32")
DATA = DataParams()


def student_dir(tmp_path: Path, backbone: torch.nn.Module) -> Path:
    out = tmp_path / "student"
    save_embedding_model(
        out / "model.pt", backbone, EmbeddingModelInfo("resnet18_cifar", 512, 32, Normalization(), "test")
    )
    (out / "history.json").write_text(json.dumps({"epochs": [], "resumed_from_epoch": 0}))
    return out


@pytest.fixture(scope="module")
def ingested(tiny_cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ingested")
    ingest(IngestParams(source=str(tiny_cifar_archive)), out)
    return out


def test_metrics_plot_and_baseline(ingested: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    metrics = run(
        FAST,
        DATA.train_split,
        DATA.test_split,
        ingested,
        student_dir(tmp_path, build_backbone("resnet18_cifar").module),
        tmp_path / "eval",
    )
    assert metrics["num_bank"] == 200 and metrics["num_queries"] == 100 and metrics["k"] == 20
    # Random features of real images are better than chance (0.1) on CIFAR-10.
    assert metrics["random_init"]["top1"] > 0.12
    assert metrics["gain_top1"] == pytest.approx(metrics["student"]["top1"] - metrics["random_init"]["top1"])
    assert (tmp_path / "eval" / "knn.png").stat().st_size > 10_000
    per_class = json.loads((tmp_path / "eval" / "per_class.json").read_text())
    assert len(per_class["classes"]) == 10 and len(per_class["student"]["per_class_top1"]) == 10


def test_unlabeled_data_gets_a_one_line_error_saying_what_to_do(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    with tarfile.open(tiny_cifar_archive) as tar:
        for i, member in enumerate(m for m in tar.getmembers() if m.isfile()):
            if i >= 20:
                break
            (flat / f"{i}.jpg").write_bytes(tar.extractfile(member).read())
    ingest(IngestParams(source=str(flat)), tmp_path / "ingested")
    with pytest.raises(EvaluationError) as error:
        run(
            FAST,
            DATA.train_split,
            DATA.test_split,
            tmp_path / "ingested",
            student_dir(tmp_path, build_backbone("resnet18_cifar").module),
            tmp_path / "eval",
        )
    message = str(error.value)
    assert "\n" not in message and "needs labels" in message and "class subfolders" in message
