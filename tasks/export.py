"""Stage 5, export: the student's embedding model to ONNX, checked against PyTorch, optionally int8.

The check runs both on real images of the dataset (the first
``export.num_check_images`` of the test split, else of any split) and fails the
stage if the max absolute difference exceeds ``export.tolerance``.

With ``export.quantize: int8`` the fp32 model is kept as ``model.fp32.onnx`` and
``model.onnx``, the file register logs and serve loads, becomes its static int8
quantization (:mod:`ssl_core.quantize`), calibrated on ``export.calibration_images``
training images. The report sets the two side by side, measured in this process
on this machine: throughput at a fixed batch, agreement of the embeddings, and kNN
top-1 with the lightly protocol evaluate uses (k=200, t=0.1; the labeled bank and
queries of :mod:`tasks.labeled_split`, at most ``export.knn_bank`` /
``export.knn_queries`` of them). The stage fails when int8 loses more top-1 than ``export.max_knn_drop``,
leaving the rejected model as ``model.int8.onnx`` and no ``model.onnx``; without
labeled images the gate is skipped and the report says why.

Writes ``model.onnx`` (and, with int8, ``model.fp32.onnx``) and ``export_report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ssl_core.augment import eval_transform
from ssl_core.data import ManifestDataset
from ssl_core.export import export_onnx, max_abs_difference
from ssl_core.knn import knn_evaluate
from ssl_core.label_free import sample_indices
from ssl_core.model_file import load_embedding_model
from ssl_core.onnx_embedder import CPU_PROVIDER, OnnxEmbedder
from ssl_core.onnx_format import OnnxMetadata
from ssl_core.quantize import quantize_int8, quantized_ops, throughput
from tasks.errors import UserError
from tasks.labeled_split import LabeledSplit, choose_labeled
from tasks.layout import MODEL_FILE, ONNX_FILE
from tasks.params import ExportParams, Params

logger = logging.getLogger(__name__)

FP32_ONNX_FILE = "model.fp32.onnx"  # with int8: the fp32 export, kept beside the served model.onnx
REJECTED_INT8_FILE = "model.int8.onnx"  # the int8 model until it passes the kNN gate
REPORT_FILE = "export_report.json"
# Images per run in the throughput comparison: the batch the serving issue measured raw speed at.
SPEED_BATCH_SIZE = 64
SPEED_ROUNDS, SPEED_RUNS_PER_ROUND = 5, 3  # the best of 5 rounds, fp32 and int8 taking turns: robust to neighbours
EMBED_CHUNK = 256  # images decoded and embedded at a time for the kNN comparison


class ExportMismatchError(UserError):
    """ONNX and PyTorch disagree beyond the tolerance."""


class QuantizationError(UserError):
    """int8 quantization has no training images to calibrate on, or loses more kNN top-1 than allowed."""


@dataclass(frozen=True)
class KnnProtocol:
    """How the int8 gate scores kNN: bank and queries as :func:`tasks.labeled_split.choose_labeled` picks them."""

    k: int
    temperature: float
    holdout_fraction: float
    seed: int


# The lightly benchmarks' protocol (k=200, t=0.1) with evaluate's default holdout and seed: fixed here, not read
# from evaluate's params, so that tuning the evaluation does not re-export (and re-register) the model.
LIGHTLY_KNN = KnnProtocol(k=200, temperature=0.1, holdout_fraction=0.2, seed=0)


def main(params: Params, args: argparse.Namespace) -> None:
    run(params.export, params.data.train_split, params.data.test_split, LIGHTLY_KNN, args.data, args.model, args.out)


def run(
    export: ExportParams,
    train_split: str,
    test_split: str,
    knn: KnnProtocol,
    data: Path,
    student_dir: Path,
    out_dir: Path,
) -> dict:
    """Exports the student, checks it on ``test_split`` images (any split if it has none), quantizes if asked."""
    backbone, info = load_embedding_model(student_dir / MODEL_FILE)
    metadata = OnnxMetadata.from_info(info)
    for stale in (ONNX_FILE, FP32_ONNX_FILE, REJECTED_INT8_FILE):  # left by an earlier run with other settings
        (out_dir / stale).unlink(missing_ok=True)
    quantize = export.quantize == "int8"
    path = export_onnx(backbone, metadata, out_dir / (FP32_ONNX_FILE if quantize else ONNX_FILE), export.opset)

    transform = eval_transform(info.image_size, info.normalization)
    dataset = ManifestDataset(data, splits=[test_split], transform=transform)
    if len(dataset) == 0:
        dataset = ManifestDataset(data, transform=transform)
    count = min(export.num_check_images, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    difference = max_abs_difference(path, backbone, images)
    report: dict[str, Any] = {
        "onnx": str(out_dir / ONNX_FILE),
        "opset": export.opset,
        "check_images": count,
        "max_abs_difference": difference,
        "tolerance": export.tolerance,
        "metadata": metadata.to_props(),
    }
    if difference > export.tolerance:
        _write_report(report, out_dir)
        raise ExportMismatchError(
            f"ONNX and PyTorch embeddings differ by {difference:.2e} > export.tolerance {export.tolerance:.2e} "
            f"on {count} images: check the opset or raise the tolerance."
        )
    logger.info("ONNX export %s: max |ONNX - PyTorch| = %.2e on %d images.", path, difference, count)
    if not quantize:
        report["quantization"] = "none"
        _write_report(report, out_dir)
        return report

    int8_path = out_dir / REJECTED_INT8_FILE
    report["quantization"] = quantization = _quantize_and_compare(
        export,
        knn,
        ManifestDataset(data, splits=[train_split], transform=transform),
        ManifestDataset(data, splits=[test_split], transform=transform),
        path,
        int8_path,
        images.numpy(),
    )
    gate = quantization["knn"]
    if "drop" in gate and gate["drop"] > export.max_knn_drop:
        quantization["decision"] = f"rejected: {_drop_sentence(gate)}"
        _write_report(report, out_dir)
        raise QuantizationError(
            f"int8 kNN top-1 {gate['int8_top1']:.4f} vs fp32 {gate['fp32_top1']:.4f} on {gate['queries']} queries: "
            f"{_drop_sentence(gate)}. Try export.calibration_method percentile or entropy, more "
            f"export.calibration_images, or export.quantize: none (the rejected model is {int8_path})."
        )
    int8_path.replace(out_dir / ONNX_FILE)
    quantization["int8_file"] = str(out_dir / ONNX_FILE)
    quantization["decision"] = (
        f"int8 served: {_drop_sentence(gate)}"
        if "drop" in gate
        else f"int8 served without the kNN gate: {gate['skipped']}"
    )
    _write_report(report, out_dir)
    speed = quantization["throughput"]
    logger.info(
        "int8: %.2fx the fp32 throughput (%d threads, batch %d); %s.",
        speed["speedup"],
        speed["threads"],
        speed["batch_size"],
        quantization["decision"],
    )
    return report


def _quantize_and_compare(
    export: ExportParams,
    knn: KnnProtocol,
    train: ManifestDataset,
    test: ManifestDataset,
    fp32_path: Path,
    int8_path: Path,
    check_images: np.ndarray,
) -> dict[str, Any]:
    """Quantizes ``fp32_path`` to ``int8_path`` on ``train`` images, then measures both: speed, agreement, kNN."""
    labeled = choose_labeled(train.labels, test.labels, knn.holdout_fraction, knn.seed)
    # Held-out kNN queries stay unseen: they calibrate nothing.
    held_out = (
        set(labeled.queries.tolist()) if isinstance(labeled, LabeledSplit) and not labeled.queries_from_test else set()
    )
    candidates = [row for row in range(len(train)) if row not in held_out]
    if not candidates:
        raise QuantizationError(
            "export.quantize: int8 calibrates on the images of data.train_split, and that split has none: "
            "check data.train_split, or set export.quantize: none."
        )
    rows = [candidates[i] for i in sample_indices(len(candidates), export.calibration_images, knn.seed)]
    calibration = np.stack([train[row][0].numpy() for row in rows])  # (C, 3, H, W)
    quantize_int8(fp32_path, int8_path, calibration, export.calibration_method)

    threads = _available_cores()
    models = {
        name: OnnxEmbedder(file, intra_op_threads=threads, providers=[CPU_PROVIDER])
        for name, file in (("fp32", fp32_path), ("int8", int8_path))
    }
    batch = np.resize(check_images, (SPEED_BATCH_SIZE, *check_images.shape[1:]))  # repeats images if fewer
    speed = throughput(
        {name: model.embed_arrays for name, model in models.items()}, batch, SPEED_ROUNDS, SPEED_RUNS_PER_ROUND
    )
    # Unit-length embeddings: the dot product of a row pair is their cosine similarity.
    cosine = (models["fp32"].embed_arrays(check_images) * models["int8"].embed_arrays(check_images)).sum(axis=1)
    return {
        "mode": "int8",
        "fp32_file": str(fp32_path),
        "int8_file": str(int8_path),
        "size_mb": {name: round(model.path.stat().st_size / 2**20, 2) for name, model in models.items()},
        "calibration": {"images": len(rows), "method": export.calibration_method},
        "quantized_ops": quantized_ops(int8_path),
        "throughput": {
            "batch_size": SPEED_BATCH_SIZE,
            "threads": threads,
            "measured": f"best of {SPEED_ROUNDS} rounds of {SPEED_RUNS_PER_ROUND} runs, the models taking turns",
            "provider": CPU_PROVIDER,
            "fp32_images_per_s": round(speed["fp32"], 1),
            "int8_images_per_s": round(speed["int8"], 1),
            "speedup": round(speed["int8"] / speed["fp32"], 3),
        },
        "agreement": {
            "images": len(check_images),
            "min_cosine": float(cosine.min()),
            "mean_cosine": float(cosine.mean()),
        },
        "knn": _knn_gate(models, train, test, labeled, knn, export),
    }


def _knn_gate(
    models: dict[str, OnnxEmbedder],
    train: ManifestDataset,
    test: ManifestDataset,
    labeled: LabeledSplit | str,
    knn: KnnProtocol,
    export: ExportParams,
) -> dict[str, Any]:
    """kNN top-1 of each model on the same (sampled) labeled bank and queries, and the fp32 - int8 drop."""
    if isinstance(labeled, str):
        return {"skipped": labeled}
    bank_rows = [int(labeled.bank[i]) for i in sample_indices(len(labeled.bank), export.knn_bank, knn.seed)]
    query_rows = [int(labeled.queries[i]) for i in sample_indices(len(labeled.queries), export.knn_queries, knn.seed)]
    queried = test if labeled.queries_from_test else train
    with tqdm(total=len(bank_rows) + len(query_rows), desc="kNN fp32 vs int8", unit="img", mininterval=1.0) as bar:
        bank = _embed_rows(models, train, bank_rows, bar.update)
        queries = _embed_rows(models, queried, query_rows, bar.update)
    train_labels, query_labels = train.labels, queried.labels
    bank_y = torch.tensor([train_labels[row] for row in bank_rows])  # (n,)
    query_y = torch.tensor([query_labels[row] for row in query_rows])  # (q,)
    top1 = {
        name: knn_evaluate(
            torch.from_numpy(bank[name]),
            bank_y,
            torch.from_numpy(queries[name]),
            query_y,
            len(train.class_names),
            knn.k,
            knn.temperature,
        ).top1
        for name in models
    }
    return {
        "k": knn.k,
        "temperature": knn.temperature,
        "bank": len(bank_rows),
        "queries": len(query_rows),
        "queries_from": "test split" if labeled.queries_from_test else "train split, held out",
        "fp32_top1": top1["fp32"],
        "int8_top1": top1["int8"],
        "drop": top1["fp32"] - top1["int8"],
        "max_drop": export.max_knn_drop,
    }


def _embed_rows(
    models: dict[str, OnnxEmbedder], dataset: ManifestDataset, rows: list[int], on_batch: Callable[[int], None]
) -> dict[str, np.ndarray]:
    """Each model's (len(rows), D) embeddings of ``dataset[rows]``, decoded once, a chunk at a time (bounded memory)."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for start in range(0, len(rows), EMBED_CHUNK):
        images = np.stack([dataset[row][0].numpy() for row in rows[start : start + EMBED_CHUNK]])
        for name, model in models.items():
            chunks[name].append(model.embed_arrays(images))
        on_batch(len(images))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _drop_sentence(gate: dict[str, Any]) -> str:
    return (
        f"kNN top-1 drop {100 * gate['drop']:.2f} points "
        f"{'>' if gate['drop'] > gate['max_drop'] else '<='} export.max_knn_drop {100 * gate['max_drop']:.2f}"
    )


def _available_cores() -> int:
    """The cores this process may run on (``taskset`` respected), as serve counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
