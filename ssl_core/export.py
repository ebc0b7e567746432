"""ONNX export of the embedding model, and its check against PyTorch.

The exported graph is backbone -> flatten -> L2 normalization, so ONNX consumers
get unit-length embeddings directly. Input: float32 (N, 3, H, W) images already
resized and normalized; the size and normalization are written into the ONNX
metadata (``metadata_props``) so a server can preprocess without other files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.onnx_format import INPUT_NAME, OUTPUT_NAME, OnnxMetadata, onnx_session

logger = logging.getLogger(__name__)


class NormalizedEmbedder(nn.Module):
    """Backbone features, flattened and L2-normalized: (N, 3, H, W) -> (N, D)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).flatten(1), dim=1)


def export_onnx(backbone: nn.Module, metadata: OnnxMetadata, path: Path, opset: int) -> Path:
    """Exports the normalized embedder with a dynamic batch axis.

    Uses the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``), the
    recommended path since torch 2.5; the opset is pinned so a torch upgrade does
    not silently change the graph consumers load.
    """
    import onnx  # optional for users who never export; listed in the project deps

    model = NormalizedEmbedder(backbone).eval().cpu()
    example = torch.zeros(2, 3, metadata.image_size, metadata.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: batch}},
        verbose=False,
    )
    program.save(str(path))
    # Add metadata and fold everything into a single self-contained file.
    proto = onnx.load(str(path))
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    external = path.with_name(path.name + ".data")
    if external.exists():  # the exporter may write weights beside the graph
        external.unlink()
    return path


def max_abs_difference(path: Path, backbone: nn.Module, images: torch.Tensor) -> float:
    """Largest |ONNX - PyTorch| over the embeddings of ``images`` (N, 3, H, W)."""
    with torch.no_grad():
        expected = NormalizedEmbedder(backbone).eval().cpu()(images.float()).numpy()
    actual = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: images.float().numpy()})[0]
    return float(np.abs(actual - expected).max())
