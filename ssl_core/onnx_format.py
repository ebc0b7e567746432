"""The exported model's interface: tensor names, metadata, and an inference session.

Everything a consumer of ``model.onnx`` needs, with numpy, onnx and onnxruntime
only: serving and batch embedding import this, not torch. The graph itself is
written by :func:`ssl_core.export.export_onnx`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl_core.model_file import EmbeddingModelInfo

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


@dataclass(frozen=True)
class OnnxMetadata:
    """What a consumer needs to feed the model; stored as ONNX metadata_props."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    backbone: str
    method: str

    @classmethod
    def from_info(cls, info: EmbeddingModelInfo) -> OnnxMetadata:
        return cls(
            info.image_size,
            info.normalization.mean,
            info.normalization.std,
            info.feature_dim,
            info.backbone,
            info.method,
        )

    def to_props(self) -> dict[str, str]:
        return {
            "image_size": str(self.image_size),
            "normalization_mean": json.dumps(list(self.mean)),
            "normalization_std": json.dumps(list(self.std)),
            "input_layout": "NCHW float32 RGB, pixels scaled to [0,1] then (x - mean) / std",
            "embedding_dim": str(self.embedding_dim),
            "embedding_normalized": "l2",
            "backbone": self.backbone,
            "method": self.method,
        }

    @classmethod
    def from_props(cls, props: dict[str, str]) -> OnnxMetadata:
        try:
            return cls(
                image_size=int(props["image_size"]),
                mean=tuple(json.loads(props["normalization_mean"])),
                std=tuple(json.loads(props["normalization_std"])),
                embedding_dim=int(props["embedding_dim"]),
                backbone=props.get("backbone", "unknown"),
                method=props.get("method", "unknown"),
            )
        except KeyError as missing:
            raise ValueError(f"ONNX model lacks metadata {missing}; export it with `sslpipe export`.") from None


def read_onnx_metadata(path: Path) -> OnnxMetadata:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return OnnxMetadata.from_props({p.key: p.value for p in proto.metadata_props})


def onnx_session(path: Path):
    """An onnxruntime CPU session for ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
