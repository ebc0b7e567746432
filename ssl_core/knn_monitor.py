"""kNN accuracy during training, on a small fixed sample of labeled images: a live curve, cheap every epoch.

The lightly benchmarks report kNN top-1 (k=200, temperature 0.1, Wu et al. 2018)
after every epoch; this is the same classifier on a bounded sample (by default
2,000 bank and 500 query images) so that it costs seconds per epoch on a CPU.
Its number is a trend to watch, not the evaluation stage's score, which uses
every labeled image.

The sample is decoded, resized and center-cropped once (kept as uint8: 150 kB
an image at 224 px), normalized batch by batch, and embedded without a
DataLoader and with the backbone in eval mode under ``torch.no_grad``:
monitoring draws no random numbers and updates no batch-norm statistics, so a
run with the monitor trains bit-exactly as one without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from ssl_core.augment import Normalization
from ssl_core.knn import knn_evaluate
from ssl_core.label_free import sample_indices
from ssl_core.precision import autocast

# The lightly benchmarks' kNN settings.
KNN_K = 200
KNN_TEMPERATURE = 0.1


@dataclass(frozen=True)
class LabeledSample:
    """Resized, center-cropped images as uint8 and their integer labels."""

    images: torch.Tensor  # (n, 3, size, size) uint8
    labels: torch.Tensor  # (n,)


def labeled_indices(labels: Sequence[int], count: int, seed: int) -> list[int]:
    """Up to ``count`` indices of labeled items (label >= 0), drawn with ``seed``, sorted."""
    labeled = [i for i, label in enumerate(labels) if label >= 0]
    return [labeled[i] for i in sample_indices(len(labeled), count, seed)]


def labeled_sample(
    load_image: Callable[[int], Image.Image], labels: Sequence[int], indices: Sequence[int], image_size: int
) -> LabeledSample:
    """The images at ``indices`` with their labels, resized and cropped as :func:`ssl_core.augment.eval_transform`.

    So the monitor sees what the evaluation stage sees.
    """
    images = [TF.pil_to_tensor(load_image(i).convert("RGB")) for i in indices]
    images = [TF.center_crop(TF.resize(image, image_size, antialias=True), image_size) for image in images]
    return LabeledSample(torch.stack(images), torch.tensor([labels[i] for i in indices]))


class KnnMonitor:
    """kNN top-1 of a backbone's features: ``bank`` votes for the labels of ``queries``."""

    def __init__(
        self,
        bank: LabeledSample,
        queries: LabeledSample,
        num_classes: int,
        normalization: Normalization,
        precision: str = "fp32",
        batch_size: int = 256,
    ):
        """``precision``: as the training's (``ssl_core.precision``), so the monitor runs at its speed."""
        self.bank, self.queries, self.num_classes, self.batch_size = bank, queries, num_classes, batch_size
        self.normalization, self.precision = normalization, precision

    @property
    def sizes(self) -> tuple[int, int]:
        """(bank images, query images)."""
        return len(self.bank.labels), len(self.queries.labels)

    def __call__(self, backbone: nn.Module) -> float:
        """kNN top-1 accuracy of ``backbone`` now; restores its train/eval mode."""
        was_training = backbone.training
        backbone.eval()
        try:
            bank = self._embed(backbone, self.bank.images)
            queries = self._embed(backbone, self.queries.images)
        finally:
            backbone.train(was_training)
        result = knn_evaluate(
            bank, self.bank.labels, queries, self.queries.labels, self.num_classes, KNN_K, KNN_TEMPERATURE
        )
        return result.top1

    @torch.no_grad()
    def _embed(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        parameter = next(backbone.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        mean, std = list(self.normalization.mean), list(self.normalization.std)
        features = []
        for batch in images.split(self.batch_size):
            normalized = TF.normalize(TF.to_dtype(batch.to(device), torch.float32, scale=True), mean, std)
            with autocast(device, self.precision):
                features.append(backbone(normalized).float().cpu())
        return torch.cat(features)
