"""Stage 5, export: the student's embedding model to ONNX, checked against PyTorch.

The check runs both on real images of the dataset (the first
``export.num_check_images`` of the test split, else of any split) and fails the
stage if the max absolute difference exceeds ``export.tolerance``.
Writes ``model.onnx`` and ``export_report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ssl_core.augment import eval_transform
from ssl_core.data import ManifestDataset
from ssl_core.export import export_onnx, max_abs_difference
from ssl_core.model_file import load_embedding_model
from ssl_core.onnx_format import OnnxMetadata
from tasks.errors import UserError
from tasks.layout import MODEL_FILE, ONNX_FILE
from tasks.params import ExportParams, Params

logger = logging.getLogger(__name__)


class ExportMismatchError(UserError):
    """ONNX and PyTorch disagree beyond the tolerance."""


def main(params: Params, args: argparse.Namespace) -> None:
    run(params.export, params.data.test_split, args.data, args.model, args.out)


def run(export: ExportParams, test_split: str, ingested: Path, student_dir: Path, out_dir: Path) -> dict:
    """Exports the student and checks it on images of ``test_split`` (of any split if it has none)."""
    backbone, info = load_embedding_model(student_dir / MODEL_FILE)
    metadata = OnnxMetadata.from_info(info)
    path = export_onnx(backbone, metadata, out_dir / ONNX_FILE, export.opset)

    dataset = ManifestDataset(
        ingested, splits=[test_split], transform=eval_transform(info.image_size, info.normalization)
    )
    if len(dataset) == 0:
        dataset = ManifestDataset(ingested, transform=dataset.transform)
    count = min(export.num_check_images, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    difference = max_abs_difference(path, backbone, images)
    report = {
        "onnx": str(path),
        "opset": export.opset,
        "check_images": count,
        "max_abs_difference": difference,
        "tolerance": export.tolerance,
        "metadata": metadata.to_props(),
    }
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if difference > export.tolerance:
        raise ExportMismatchError(
            f"ONNX and PyTorch embeddings differ by {difference:.2e} > export.tolerance {export.tolerance:.2e} "
            f"on {count} images: check the opset or raise the tolerance."
        )
    logger.info("ONNX export %s: max |ONNX - PyTorch| = %.2e on %d images.", path, difference, count)
    return report
