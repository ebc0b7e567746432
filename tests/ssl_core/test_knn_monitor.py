"""The per-epoch kNN monitor on real CIFAR-10 images: what it measures, and that it leaves training untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_core.augment import MultiView, Normalization, ViewConfig, view_transform
from ssl_core.data import ManifestDataset
from ssl_core.engine import train
from ssl_core.knn_monitor import KnnMonitor, LabeledSample, labeled_indices, labeled_sample
from tests.ssl_core.test_engine import make_config, make_method, weights

pytestmark = pytest.mark.usefixtures("single_thread")


def monitor_of(folder: Path, bank: int = 32, queries: int = 16) -> KnnMonitor:
    """Bank and queries: disjoint labeled train images of ``folder``."""
    images = ManifestDataset(folder, splits=["train"])
    labels = images.labels
    bank_indices = labeled_indices(labels, bank, seed=0)
    rest = [-1 if i in set(bank_indices) else label for i, label in enumerate(labels)]
    return KnnMonitor(
        labeled_sample(images.load_image, labels, bank_indices, 32),
        labeled_sample(images.load_image, rest, labeled_indices(rest, queries, seed=0), 32),
        len(images.class_names),
        Normalization(),
    )


def test_the_sample_is_labeled_seeded_and_disjoint_where_asked() -> None:
    labels = [0, -1, 1, -1, 2, 0, 1, 2]
    drawn = labeled_indices(labels, 3, seed=5)
    assert len(drawn) == 3 and all(labels[i] >= 0 for i in drawn)
    assert drawn == labeled_indices(labels, 3, seed=5) and drawn == sorted(drawn)
    assert labeled_indices(labels, 100, seed=5) == [0, 2, 4, 5, 6, 7]  # all the labeled ones
    assert labeled_indices([-1, -1], 3, seed=5) == []


def test_a_backbone_that_sees_the_label_scores_one_and_a_constant_one_scores_chance() -> None:
    # Images whose mean colour channel is their class: the channel means separate the classes exactly.
    classes = torch.arange(3).repeat_interleave(20)
    images = torch.zeros(60, 3, 8, 8, dtype=torch.uint8)
    images[torch.arange(60), classes] = 200
    sample = LabeledSample(images, classes)
    monitor = KnnMonitor(sample, sample, 3, Normalization(), batch_size=7)
    channel_means = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert monitor(channel_means) == 1.0
    constant = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    nn.init.zeros_(constant[0].weight), nn.init.ones_(constant[0].bias)
    assert monitor(constant) == pytest.approx(1 / 3, abs=0.02)  # every vote ties: one class for all


def test_monitoring_every_epoch_leaves_training_bit_exact(cifar_folder: Path, tmp_path: Path) -> None:
    view = view_transform(ViewConfig(32), Normalization())
    dataset = ManifestDataset(cifar_folder, splits=["train"], transform=MultiView([view, view]))
    monitor = monitor_of(cifar_folder)
    plain, monitored = make_method(), make_method()
    plain_history = train(plain, dataset, make_config(epochs=2), tmp_path / "plain")
    scores = []
    monitored_history = train(
        monitored,
        dataset,
        make_config(epochs=2),
        tmp_path / "monitored",
        on_epoch_end=lambda stats: scores.append(monitor(monitored.backbone)),
    )
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    assert [e.loss for e in monitored_history.epochs] == [e.loss for e in plain_history.epochs]
    for name, tensor in weights(plain).items():  # batch-norm running statistics included
        assert torch.equal(tensor, weights(monitored)[name]), name
    assert monitored.training  # back in train mode
