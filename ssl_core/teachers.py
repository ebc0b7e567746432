"""Frozen teachers for distillation.

Two sources live here, both torch-only: an embedding-model file written by this
library (for instance a larger network pretrained with SimCLR on the same data),
and DINOv2 from torch.hub for machines with internet. A model registered in MLflow
is resolved to such a file by the pipeline's task layer before it gets here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.backbones import infer_feature_dim
from ssl_core.manifest import sha256_file
from ssl_core.model_file import load_embedding_model

DINOV2_MODELS = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
DINOV2_PATCH = 14


@dataclass(frozen=True)
class Teacher:
    """A frozen embedding network and the size of its embeddings.

    Attributes:
        description: what it is and where it came from, for people ("resnet18_cifar from models/teacher/model.pt").
        weights_sha256: the SHA-256 of the file its weights were read from; None for weights that come from
            elsewhere (torch.hub), which ``description`` names with the input size. A resumed distillation must
            not continue a run distilled from another teacher, so its checkpoint fingerprint includes both.
    """

    module: nn.Module
    embedding_dim: int
    description: str
    weights_sha256: str | None = None


def load_teacher_file(path: Path) -> Teacher:
    """Teacher from an embedding-model file (``model.pt`` of a pretrain run).

    Raises:
        FileNotFoundError: with what to do when the file is missing.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"Teacher checkpoint {path} not found: pretrain a teacher first "
            f"or point to an existing embedding-model file (model.pt of a pretrain run)."
        )
    backbone, info = load_embedding_model(path)
    return Teacher(_frozen(backbone), info.feature_dim, f"{info.backbone} from {path}", sha256_file(Path(path)))


class ResizeTo(nn.Module):
    """Resizes inputs before a network that needs a fixed size (ViT patch grids)."""

    def __init__(self, network: nn.Module, size: int) -> None:
        super().__init__()
        self.network = network
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bicubic", align_corners=False)
        return self.network(images)


def load_dinov2_teacher(name: str = "dinov2_vitb14", image_size: int = 224) -> Teacher:
    """DINOv2 (Oquab et al., 2023, https://arxiv.org/abs/2304.07193) from torch.hub.

    Needs internet on first use (weights are cached in ``$TORCH_HOME``). Inputs are
    resized to ``image_size`` (a multiple of the 14 px patch); the output is the
    CLS-token embedding. LightlyTrain's distillation v1 uses ViT-B/14 by default.

    Raises:
        ValueError: for an unknown model name or a size that is not a multiple of 14.
        RuntimeError: when the hub cannot be reached, with what to do instead.
    """
    if name not in DINOV2_MODELS:
        raise ValueError(f"Unknown DINOv2 model {name!r}; choose one of {DINOV2_MODELS}.")
    if image_size % DINOV2_PATCH:
        raise ValueError(f"DINOv2 input size must be a multiple of {DINOV2_PATCH}, got {image_size}.")
    try:
        network = torch.hub.load("facebookresearch/dinov2", name, trust_repo=True)
    except Exception as error:  # hub raises URLError, HTTPError, OSError... depending on the failure
        raise RuntimeError(
            f"Could not load {name} from torch.hub ({error}). Without internet, use an "
            f"embedding-model file as the teacher instead."
        ) from error
    module = ResizeTo(network, image_size)
    # The input size is part of what the teacher is: the same weights at another size teach other targets.
    return Teacher(_frozen(module), infer_feature_dim(module, image_size), f"{name} at {image_size} px from torch.hub")


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)
