"""Embedding a dataset with a frozen backbone."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_core.augment import Normalization
from ssl_core.precision import autocast


@torch.no_grad()
def compute_embeddings(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized embeddings and labels of every item of ``dataset``.

    Args:
        model: maps (B, 3, H, W) to (B, D); put in eval mode here.
        dataset: yields (image tensor, label index).
        on_batch: called with the batch size after each batch (progress bars).

    Returns:
        (N, D) float32 embeddings on the CPU and (N,) int64 labels.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    embeddings, labels = [], []
    for images, batch_labels in loader:
        with autocast(device, precision):
            features = model(images.to(device, non_blocking=True))
        embeddings.append(F.normalize(features.float().flatten(1), dim=1).cpu())
        labels.append(batch_labels)
        if on_batch is not None:
            on_batch(len(batch_labels))
    model.train(was_training)
    return torch.cat(embeddings), torch.cat(labels).long()


@torch.no_grad()
def embed_uint8_images(
    model: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    device: str | torch.device,
    precision: str = "fp32",
    batch_size: int = 1024,
) -> torch.Tensor:
    """L2-normalized embeddings of (N, 3, S, S) uint8 images already at the model's input size, on ``device``.

    The device-side twin of :func:`compute_embeddings` for
    :class:`~ssl_core.device_data.DeviceImages`: no decoding, no host transfer of
    embeddings, one chunk of ``batch_size`` images at a time.
    """
    was_training = model.training
    model.eval()
    mean = torch.tensor(normalization.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(normalization.std, device=device).view(1, 3, 1, 1) * 255
    embeddings = []
    for chunk in images.split(batch_size):
        pixels = (chunk.to(device, non_blocking=True).float() - mean) / std
        with autocast(device, precision):
            features = model(pixels.contiguous(memory_format=torch.channels_last))
        embeddings.append(F.normalize(features.float().flatten(1), dim=1))
    model.train(was_training)
    return torch.cat(embeddings)
