"""The embedding-model file: a trained backbone plus what is needed to use it.

Written by the pretrain stage (``model.pt``) and read by evaluate, export, and
distillation when the model serves as a teacher. It holds the backbone's name and
weights, the input size and normalization, and the resolved training config, so
the file alone rebuilds the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone

FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmbeddingModelInfo:
    """Everything about an embedding model except its weights."""

    backbone: str
    feature_dim: int
    image_size: int
    normalization: Normalization
    method: str
    config: dict[str, Any] = field(default_factory=dict)


def save_embedding_model(path: Path, backbone: nn.Module, info: EmbeddingModelInfo) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "info": {**asdict(info), "normalization": asdict(info.normalization)},
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
    }
    torch.save(payload, path)


def load_embedding_model(path: Path) -> tuple[nn.Module, EmbeddingModelInfo]:
    """Rebuilds the backbone (in eval mode, on CPU) from a file of :func:`save_embedding_model`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not an embedding-model file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"No embedding model at {path}.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an embedding-model file (format_version {FORMAT_VERSION}).")
    raw = payload["info"]
    norm = raw["normalization"]
    info = EmbeddingModelInfo(
        backbone=raw["backbone"],
        feature_dim=raw["feature_dim"],
        image_size=raw["image_size"],
        normalization=Normalization(mean=tuple(norm["mean"]), std=tuple(norm["std"])),
        method=raw["method"],
        config=raw["config"],
    )
    backbone = build_backbone(info.backbone, info.image_size).module
    backbone.load_state_dict(payload["state_dict"])
    return backbone.eval(), info
