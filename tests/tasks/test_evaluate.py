"""Evaluate: kNN of student vs random init on real images; leak-free accuracy; clear errors without labels."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from ssl_core.augment import Normalization, eval_transform
from ssl_core.backbones import build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.knn import knn_evaluate
from ssl_core.manifest import MANIFEST_NAME, read_manifest
from ssl_core.model_file import EmbeddingModelInfo, load_embedding_model, save_embedding_model
from ssl_core.precision import resolve_device
from tasks.evaluate import CURATION_REPORT, EvaluationError, leaked_test_paths, run
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
    # An ingested folder has no curation report: no leak-free numbers.
    assert "num_leaked_queries" not in metrics and "top1_without_leaks" not in metrics["student"]


def test_leaked_test_images_are_scored_apart(ingested: Path, tmp_path: Path) -> None:
    """With curate's report.json, the same kNN over the queries that did not leak, from the same embeddings."""
    curated = tmp_path / "curated"
    shutil.copytree(ingested, curated)
    records = read_manifest(curated / MANIFEST_NAME)
    train = [r.path for r in records if r.split == DATA.train_split]
    leaked = [r.path for r in records if r.split == DATA.test_split][:2]
    leakage = [  # one test image found twice: it counts once
        {"train": train[0], "test": leaked[0], "similarity": 1.0},
        {"train": train[1], "test": leaked[0], "similarity": 0.95},
        {"train": train[2], "test": leaked[1], "similarity": 0.93},
    ]
    (curated / CURATION_REPORT).write_text(json.dumps({"leakage": leakage, "counts": {}}))
    torch.manual_seed(0)
    student = student_dir(tmp_path, build_backbone("resnet18_cifar").module)

    metrics = run(FAST, DATA.train_split, DATA.test_split, curated, student, tmp_path / "eval")

    assert metrics["num_leaked_queries"] == 2 and metrics["num_queries"] == 100
    for name in ("student", "random_init"):
        assert set(metrics[name]) == {"top1", "top5", "top1_without_leaks", "top5_without_leaks"}
    # The reference: the student's kNN with the two leaked queries left out of the query set.
    backbone, info = load_embedding_model(student / "model.pt")
    transform = eval_transform(info.image_size, info.normalization)
    device = resolve_device(FAST.device)
    bank = ManifestDataset(curated, splits=[DATA.train_split], transform=transform)
    queries = ManifestDataset(curated, splits=[DATA.test_split], transform=transform)
    queries.records = [r for r in queries.records if r.path not in leaked]
    bank_x, bank_y = compute_embeddings(backbone.to(device), bank, 256, 0, device, FAST.precision)
    query_x, query_y = compute_embeddings(backbone, queries, 256, 0, device, FAST.precision)
    reference = knn_evaluate(bank_x, bank_y, query_x, query_y, 10, FAST.k, FAST.temperature)
    assert reference.num_queries == 98
    assert metrics["student"]["top1_without_leaks"] == pytest.approx(reference.top1)
    assert metrics["student"]["top5_without_leaks"] == pytest.approx(reference.top5)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics


def test_a_report_that_is_not_curates_is_a_clear_error(tmp_path: Path) -> None:
    assert leaked_test_paths(tmp_path) is None
    (tmp_path / CURATION_REPORT).write_text(json.dumps({"leaks": []}))
    with pytest.raises(EvaluationError, match="is not a curation report .*rerun `sslpipe curate`"):
        leaked_test_paths(tmp_path)


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
