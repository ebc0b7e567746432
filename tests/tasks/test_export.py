"""The export stage with ``export.quantize``: which files it leaves, its report, and the kNN gate.

Real CIFAR-10 images and a real (random-init) torchvision ResNet-18, which is cheap at
32 px; the gate compares real fp32 and int8 ONNX models.
"""

from __future__ import annotations

import json
import shutil
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone
from ssl_core.manifest import MANIFEST_NAME, read_manifest, write_manifest
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from ssl_core.onnx_format import read_onnx_metadata
from ssl_core.quantize import CALIBRATION_METHODS, QUANTIZATION_KEY, quantize_int8, quantized_ops
from tasks import export as export_stage
from tasks.export import FP32_ONNX_FILE, REJECTED_INT8_FILE, REPORT_FILE, KnnProtocol, QuantizationError
from tasks.layout import MODEL_FILE, ONNX_FILE
from tasks.params import ExportParams, ParamsError, parse_params
from tests.datasets import cifar10_archive
from tests.ssl_core.conftest import extract_cifar_folder

pytest.importorskip("onnxruntime")

TRAIN_PER_CLASS, TEST_PER_CLASS, CLASSES = 8, 4, 5
# k=1 on few images: each query takes its nearest bank image's class.
KNN = KnnProtocol(k=1, temperature=0.1, holdout_fraction=0.25, seed=0)
INT8 = ExportParams(quantize="int8", calibration_images=16, num_check_images=8, max_knn_drop=1.0)


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 classes: 8 train and 4 test images each, as the ingest stage lays them out."""
    return extract_cifar_folder(
        cifar10_archive(TRAIN_PER_CLASS, TEST_PER_CLASS),
        tmp_path_factory.mktemp("labeled"),
        {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS},
        CLASSES,
    )


@pytest.fixture(scope="module")
def unlabeled_folder(labeled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images without labels (the manifest's only difference)."""
    root = tmp_path_factory.mktemp("unlabeled")
    records = [
        replace(r, path=str(labeled_folder / r.path), label=None) for r in read_manifest(labeled_folder / MANIFEST_NAME)
    ]
    write_manifest(records, root / MANIFEST_NAME)
    return root


@pytest.fixture(scope="module")
def train_only_folder(labeled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The labeled train images alone: kNN holds a quarter of each class out as queries."""
    root = tmp_path_factory.mktemp("train_only")
    records = [replace(r, path=str(labeled_folder / r.path)) for r in read_manifest(labeled_folder / MANIFEST_NAME)]
    write_manifest([r for r in records if r.split == "train"], root / MANIFEST_NAME)
    return root


@pytest.fixture(scope="module")
def copies_folder(labeled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The labeled train images, and a copy of each as the test split."""
    root = tmp_path_factory.mktemp("copies")
    train = [replace(r, path=str(labeled_folder / r.path)) for r in read_manifest(labeled_folder / MANIFEST_NAME)]
    train = [r for r in train if r.split == "train"]
    write_manifest(train + [replace(r, split="test") for r in train], root / MANIFEST_NAME)
    return root


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")
    info = EmbeddingModelInfo("resnet18", backbone.feature_dim, 32, Normalization(), "simclr")
    folder = tmp_path_factory.mktemp("student")
    save_embedding_model(folder / MODEL_FILE, backbone.module.eval(), info)
    return folder


@pytest.fixture(scope="module")
def int8_export(train_only_folder: Path, student: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx")
    return out, export_stage.run(INT8, "train", "test", KNN, train_only_folder, student, out)


@pytest.fixture
def exported_once(int8_export, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage copies the module's fp32 export of the same student instead of exporting again (seconds each)."""

    def copy_export(backbone, metadata, path: Path, opset: int) -> Path:
        return Path(shutil.copyfile(int8_export[0] / FP32_ONNX_FILE, path))

    monkeypatch.setattr(export_stage, "export_onnx", copy_export)


def test_int8_serves_the_int8_model_and_keeps_the_fp32_one(int8_export) -> None:
    out, _ = int8_export
    assert sorted(p.name for p in out.iterdir()) == sorted([ONNX_FILE, FP32_ONNX_FILE, REPORT_FILE])
    assert quantized_ops(out / ONNX_FILE)["Conv"] == 20  # ResNet-18: every conv, the downsampling ones included
    assert quantized_ops(out / FP32_ONNX_FILE) == {}
    # serve reads its preprocessing from the metadata: identical, plus what the weights are.
    assert read_onnx_metadata(out / ONNX_FILE) == read_onnx_metadata(out / FP32_ONNX_FILE)


def test_report_sets_int8_beside_fp32(int8_export) -> None:
    out, report = int8_export
    assert json.loads((out / REPORT_FILE).read_text()) == report
    quantization = report["quantization"]
    assert quantization["calibration"] == {"images": 16, "method": "minmax"}
    speed = quantization["throughput"]
    assert speed["batch_size"] == 64 and speed["threads"] >= 1
    assert speed["speedup"] == pytest.approx(speed["int8_images_per_s"] / speed["fp32_images_per_s"], rel=1e-2)
    # Measured 0.998 (16 calibration images); calibrated on images scaled by 0.01, 0.92.
    assert quantization["agreement"]["min_cosine"] > 0.99
    knn = quantization["knn"]
    assert (knn["bank"], knn["queries"], knn["queries_from"]) == (30, 10, "train split, held out")
    assert knn["drop"] == pytest.approx(knn["fp32_top1"] - knn["int8_top1"])
    assert quantization["decision"].startswith("int8 served: kNN top-1 drop")


@pytest.mark.usefixtures("exported_once")
def test_the_gate_rejects_an_int8_model_that_loses_accuracy(copies_folder, student, tmp_path, monkeypatch) -> None:
    """Calibrated on blank images, the int8 model saturates on real ones and confuses some of them.

    Each query is a copy of a bank image, so fp32 (k=1) scores 1.0 and so does any model that still tells
    the images apart: the drop (measured: 0.20, 8 of 40 queries) comes from the broken ranges, not noise.
    """

    def blank_calibration(fp32: Path, out: Path, calibration: np.ndarray, method: str) -> Path:
        return quantize_int8(fp32, out, np.zeros_like(calibration), method)

    monkeypatch.setattr(export_stage, "quantize_int8", blank_calibration)
    with pytest.raises(QuantizationError, match=r"kNN top-1 drop \d+\.\d\d points > export\.max_knn_drop 1\.00\. Try"):
        export_stage.run(
            INT8.model_copy(update={"max_knn_drop": 0.01}), "train", "test", KNN, copies_folder, student, tmp_path
        )
    assert not (tmp_path / ONNX_FILE).exists()  # nothing for register to pick up
    assert quantized_ops(tmp_path / REJECTED_INT8_FILE)  # left to inspect
    report = json.loads((tmp_path / REPORT_FILE).read_text())["quantization"]
    assert report["knn"]["fp32_top1"] == 1.0
    assert report["knn"]["drop"] >= 0.1 and report["decision"].startswith("rejected")


@pytest.mark.usefixtures("exported_once")
def test_without_labels_the_gate_is_skipped_and_said(unlabeled_folder, student, tmp_path) -> None:
    report = export_stage.run(INT8, "train", "test", KNN, unlabeled_folder, student, tmp_path)["quantization"]
    assert report["knn"] == {"skipped": "no image of the train split has a label"}
    assert report["decision"] == "int8 served without the kNN gate: no image of the train split has a label"
    assert QUANTIZATION_KEY in {p.key for p in onnx.load(str(tmp_path / ONNX_FILE)).metadata_props}


def test_without_quantization_model_onnx_is_fp32_and_stale_files_go(labeled_folder, student, tmp_path) -> None:
    (tmp_path / FP32_ONNX_FILE).write_bytes(b"left by an int8 run")
    report = export_stage.run(ExportParams(num_check_images=8), "train", "test", KNN, labeled_folder, student, tmp_path)
    assert report["quantization"] == "none"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ONNX_FILE, REPORT_FILE])
    assert quantized_ops(tmp_path / ONNX_FILE) == {}


# --- params ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("quantize", "int4", r"export\.quantize = 'int4': .*'none'.*'int8'"),
        ("calibration_images", 0, r"export\.calibration_images = 0: .*greater than or equal to 1"),
        ("calibration_method", "kl", r"export\.calibration_method = 'kl': .*'minmax'"),
        ("max_knn_drop", -0.01, r"export\.max_knn_drop = -0\.01: .*greater than or equal to 0"),
        ("max_knn_drop", 2, r"export\.max_knn_drop = 2: .*less than or equal to 1"),
        ("knn_queries", 0, r"export\.knn_queries = 0: .*greater than or equal to 1"),
    ],
)
def test_bad_export_params_name_the_key(key: str, value, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params({"export": {key: value}})


def test_calibration_methods_are_the_quantizers() -> None:
    choices = typing.get_args(ExportParams.model_fields["calibration_method"].annotation)
    assert choices == CALIBRATION_METHODS
