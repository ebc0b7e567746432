"""Evaluate on real images: label-free metrics always; kNN and linear probe on whatever has labels; leak-free kNN."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
import torch

from ssl_core.augment import Normalization, eval_transform
from ssl_core.backbones import build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.knn import knn_evaluate
from ssl_core.label_free import rankme
from ssl_core.manifest import MANIFEST_NAME, read_manifest
from ssl_core.model_file import EmbeddingModelInfo, load_embedding_model, save_embedding_model
from ssl_core.precision import resolve_device
from tasks.evaluate import CURATION_REPORT, EvaluationError, leaked_test_paths, run
from tasks.ingest import run as ingest
from tasks.params import DataParams, EvaluateParams, IngestParams

FAST = EvaluateParams(k=20, num_workers=0, precision="fp32", view_pairs=64)
DATA = DataParams()
# torchvision's ResNet-18 at 32 px: its ImageNet stem leaves 8x8 maps, 16x fewer FLOPs than the project's default
# resnet18_cifar for the same 512-d features. What these tests check does not depend on the stem.
BACKBONE = "resnet18"


def student_dir(tmp_path: Path, backbone: torch.nn.Module) -> Path:
    out = tmp_path / "student"
    save_embedding_model(out / "model.pt", backbone, EmbeddingModelInfo(BACKBONE, 512, 32, Normalization(), "test"))
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
        student_dir(tmp_path, build_backbone(BACKBONE).module),
        tmp_path / "eval",
    )
    assert metrics["num_bank"] == 200 and metrics["num_queries"] == 100 and metrics["k"] == 20
    # Random features of real images are better than chance (0.1) on CIFAR-10.
    assert metrics["random_init"]["top1"] > 0.12
    assert metrics["gain_top1"] == pytest.approx(metrics["student"]["top1"] - metrics["random_init"]["top1"])
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 10_000
    per_class = json.loads((tmp_path / "eval" / "per_class.json").read_text())
    assert len(per_class["classes"]) == 10 and len(per_class["student"]["per_class_top1"]) == 10
    assert metrics["labels"] == {"bank": 200, "queries": 100, "queries_from": "test split", "classes": 10}
    # The linear probe next to kNN: random features of real images are linearly better than chance too.
    assert metrics["random_init"]["linear_top1"] > 0.12
    assert metrics["random_init"]["linear_top5"] >= metrics["random_init"]["linear_top1"]
    # Label-free metrics on every train image, and on 64 pairs of views.
    assert metrics["num_images"] == metrics["rankme_images"] == 200 and metrics["view_pairs"] == 64
    for name in ("student", "random_init"):
        assert 1.0 < metrics[name]["rankme"] <= 200
        assert 0.0 < metrics[name]["alignment"] < 4.0 and -4.0 < metrics[name]["uniformity"] < 0.0
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
    student = student_dir(tmp_path, build_backbone(BACKBONE).module)

    metrics = run(FAST, DATA.train_split, DATA.test_split, curated, student, tmp_path / "eval")

    assert metrics["num_leaked_queries"] == 2 and metrics["num_queries"] == 100
    for name in ("student", "random_init"):
        assert {"top1", "top5", "top1_without_leaks", "top5_without_leaks"} <= set(metrics[name])
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


def extract(archive: Path, destination: Path, place: Callable[[PurePosixPath], str | None]) -> Path:
    """The archive's images at ``place(path inside cifar10-subset/)``; None leaves an image out."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            target = place(PurePosixPath(member.name).relative_to("cifar10-subset"))
            if target is not None:
                (destination / target).parent.mkdir(parents=True, exist_ok=True)
                (destination / target).write_bytes(tar.extractfile(member).read())
    return destination


def test_unlabeled_folder_gets_label_free_metrics_and_no_knn(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    """A flat folder of 60 images: RankMe, alignment and uniformity of both models; no kNN, and it says why."""

    def flat(path: PurePosixPath) -> str | None:
        return f"{path.parent.name}-{path.name}" if path.parts[0] == "train" and int(path.stem) < 6 else None

    ingest(IngestParams(source=str(extract(tiny_cifar_archive, tmp_path / "flat", flat))), tmp_path / "ingested")
    torch.manual_seed(0)
    student = student_dir(tmp_path, build_backbone(BACKBONE).module)

    metrics = run(FAST, DATA.train_split, DATA.test_split, tmp_path / "ingested", student, tmp_path / "eval")

    assert metrics["labels"] == {"skipped": "no image of the train split has a label"}
    assert metrics["num_images"] == metrics["num_unlabeled"] == 60 and metrics["view_pairs"] == 60
    assert "top1" not in metrics["student"] and "gain_top1" not in metrics
    # RankMe is the paper's formula on the student's embeddings of every train image.
    backbone, info = load_embedding_model(student / "model.pt")
    images = ManifestDataset(tmp_path / "ingested", transform=eval_transform(info.image_size, info.normalization))
    embeddings, _ = compute_embeddings(backbone, images, 256, 0, "cpu", "fp32")
    assert metrics["student"]["rankme"] == pytest.approx(rankme(embeddings), rel=1e-4)
    assert metrics["gain_rankme"] == pytest.approx(metrics["student"]["rankme"] - metrics["random_init"]["rankme"])
    assert json.loads((tmp_path / "eval" / "per_class.json").read_text()) == {"classes": []}
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 10_000
    # The same images and views every time: the metrics repeat exactly.
    again = run(FAST, DATA.train_split, DATA.test_split, tmp_path / "ingested", student, tmp_path / "eval2")
    assert again == metrics


def test_knn_uses_the_labeled_subset_and_says_how_many(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    """Class folders for 4 classes next to an ``unlabeled/`` folder, and a labeled test split: kNN on the labeled."""
    classes = ("airplane", "cat", "ship", "truck")

    def partly_labeled(path: PurePosixPath) -> str | None:
        split, label, name = path.parts
        if split == "train":
            return f"train/{label}/{name}" if label in classes and int(name[:4]) < 8 else f"unlabeled/{label}-{name}"
        return f"test/{label}/{name}" if label in classes else None

    source = extract(tiny_cifar_archive, tmp_path / "source", partly_labeled)
    ingest(IngestParams(source=str(source)), tmp_path / "ingested")
    torch.manual_seed(0)
    student = student_dir(tmp_path, build_backbone(BACKBONE).module)

    metrics = run(FAST, DATA.train_split, DATA.test_split, tmp_path / "ingested", student, tmp_path / "eval")

    assert metrics["labels"] == {"bank": 32, "queries": 40, "queries_from": "test split", "classes": 4}
    assert metrics["num_bank"] == 32 and metrics["num_queries"] == 40
    assert metrics["num_images"] == 200 and metrics["num_unlabeled"] == 168
    # The reference: kNN over exactly the labeled train images as bank and the labeled test images as queries.
    backbone, info = load_embedding_model(student / "model.pt")
    transform = eval_transform(info.image_size, info.normalization)
    bank = ManifestDataset(tmp_path / "ingested", splits=["train"], transform=transform)
    bank.records = [r for r in bank.records if r.label is not None]
    queries = ManifestDataset(tmp_path / "ingested", splits=["test"], transform=transform)
    bank_x, bank_y = compute_embeddings(backbone, bank, 256, 0, "cpu", "fp32")
    query_x, query_y = compute_embeddings(backbone, queries, 256, 0, "cpu", "fp32")
    reference = knn_evaluate(bank_x, bank_y, query_x, query_y, 4, FAST.k, FAST.temperature)
    assert metrics["student"]["top1"] == pytest.approx(reference.top1)
    assert 0.0 < metrics["student"]["linear_top1"] <= 1.0
    per_class = json.loads((tmp_path / "eval" / "per_class.json").read_text())
    assert per_class["classes"] == list(classes)


def test_without_labeled_test_images_labeled_train_images_are_held_out(
    tiny_cifar_archive: Path, tmp_path: Path
) -> None:
    def train_only(path: PurePosixPath) -> str | None:
        split, label, name = path.parts
        if split != "train":
            return None
        return f"{label}/{name}" if label in ("cat", "dog", "ship") else f"{label}-{name}"

    ingest(IngestParams(source=str(extract(tiny_cifar_archive, tmp_path / "src", train_only))), tmp_path / "ingested")
    torch.manual_seed(0)
    student = student_dir(tmp_path, build_backbone(BACKBONE).module)
    params = FAST.model_copy(update={"linear_probe": False})

    metrics = run(params, DATA.train_split, DATA.test_split, tmp_path / "ingested", student, tmp_path / "eval")

    # 20 labeled images per class, a fifth of each held out as queries; the other 140 images are unlabeled.
    assert metrics["labels"] == {"bank": 48, "queries": 12, "queries_from": "train split, held out", "classes": 3}
    assert metrics["num_unlabeled"] == 140 and "linear_top1" not in metrics["student"]
    assert 0.0 <= metrics["student"]["top1"] <= 1.0
