"""What a benchmark measures on a checkpoint: kNN top-1 (k=200, t=0.1) on the test split, and the label-free scores.

The kNN bank is the train split under the eval transform, the queries the test split;
the label-free scores (:mod:`ssl_core.label_free`) are RankMe of the bank and the
alignment and uniformity of two standard views of a seeded sample of train images.
With ``--loader device`` all three are decoded once onto the device and embedded there.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from benchmarks.benchmark_data import DatasetSpec
from ssl_core.augment import Normalization, ViewConfig, eval_transform
from ssl_core.batch_augment import BatchViews
from ssl_core.data import ManifestDataset
from ssl_core.device_data import DeviceImages
from ssl_core.embed import compute_embeddings, embed_uint8_images
from ssl_core.knn import knn_evaluate
from ssl_core.label_free import embed_two_views, label_free_scores, sample_indices, standard_views
from ssl_core.precision import autocast, resolve_device


@dataclass(frozen=True)
class Evaluation:
    """What is measured on one checkpoint: kNN top-1 on the test split, and the label-free scores."""

    knn_top1: float
    rankme: float
    alignment: float
    uniformity: float


@dataclass(frozen=True)
class EvaluationData:
    """The kNN bank (train split) and queries (test split) with the eval transform, and the label-free pairs.

    ``pairs`` is a seeded sample of train images under the standard (random) views: the
    same images, and with :func:`embed_two_views`'s seeding the same views, at every checkpoint.
    With ``--loader device``, ``on_device`` holds the same three decoded on the device.
    """

    bank: ManifestDataset
    queries: ManifestDataset
    pairs: Dataset
    on_device: DeviceEvaluationData | None = None


@dataclass(frozen=True)
class DeviceEvaluationData:
    """Decoded uint8 tensors: the training set (the kNN bank), the test split, and the label-free sample."""

    train: DeviceImages
    queries: DeviceImages
    pair_indices: torch.Tensor


def evaluation_data(spec: DatasetSpec, root: Path, args: argparse.Namespace) -> EvaluationData:
    norm = Normalization()
    evaluation = eval_transform(spec.image_size, norm)
    bank = ManifestDataset(root, [spec.train_split], evaluation)
    views = ManifestDataset(root, [spec.train_split], standard_views(spec.image_size, norm))
    indices = sample_indices(len(views), args.label_free_pairs, args.seed)
    pairs = Subset(views, indices)
    queries = ManifestDataset(root, [spec.test_split], evaluation)
    on_device = None
    if args.loader == "device":
        device = resolve_device(args.device)
        # Stored at the training size, as eval_transform crops it: the bank needs no other copy.
        train = DeviceImages.decode(bank, spec.image_size, device, args.num_workers)
        test = DeviceImages.decode(queries, spec.image_size, device, args.num_workers)
        on_device = DeviceEvaluationData(train, test, torch.tensor(indices, device=train.images.device))
    return EvaluationData(bank, queries, pairs, on_device)


def evaluate(backbone: torch.nn.Module, data: EvaluationData, args: argparse.Namespace) -> Evaluation:
    """kNN top-1 and the label-free scores; the bank is embedded once and serves both kNN and RankMe.

    Reseeding the global RNG for the views does not disturb training: the engine
    reseeds it at the start of every epoch.
    """
    device = resolve_device(args.device)
    backbone.to(device)
    if data.on_device is not None:
        return evaluate_on_device(backbone, data.on_device, len(data.bank.class_names), args)
    bank_x, bank_y = compute_embeddings(backbone, data.bank, 512, args.num_workers, device, args.precision)
    query_x, query_y = compute_embeddings(backbone, data.queries, 512, args.num_workers, device, args.precision)
    knn = knn_evaluate(bank_x, bank_y, query_x, query_y, len(data.bank.class_names), k=200, temperature=0.1)
    view_a, view_b = embed_two_views(backbone, data.pairs, 512, args.num_workers, device, args.precision, args.seed)
    scores = label_free_scores(bank_x, view_a, view_b)
    return Evaluation(knn.top1, scores.rankme, scores.alignment, scores.uniformity)


def evaluate_on_device(
    backbone: torch.nn.Module, data: DeviceEvaluationData, num_classes: int, args: argparse.Namespace
) -> Evaluation:
    """:func:`evaluate` from the decoded tensors, without leaving the device."""
    device = resolve_device(args.device)
    norm = Normalization()
    embed = lambda images: embed_uint8_images(backbone, images, norm, device, args.precision)  # noqa: E731
    bank_x, query_x = embed(data.train.images), embed(data.queries.images)
    bank_y, query_y = data.train.labels.to(device), data.queries.labels.to(device)
    knn = knn_evaluate(bank_x, bank_y, query_x, query_y, num_classes, k=200, temperature=0.1)
    # Two seeded draws of the standard views of the same sample, as embed_two_views on the host.
    image_size = data.train.images.shape[-1]
    standard = BatchViews([ViewConfig(image_size=image_size).spec()], norm)
    sample = data.train.images[data.pair_indices].to(device)
    pairs = []
    for offset in (0, 1):
        generator = torch.Generator(device=device).manual_seed(args.seed + offset)
        (views,) = standard(sample, generator)
        with torch.no_grad(), autocast(device, args.precision):
            features = backbone.eval()(views.contiguous(memory_format=torch.channels_last))
        pairs.append(torch.nn.functional.normalize(features.float().flatten(1), dim=1))
    backbone.train()
    scores = label_free_scores(bank_x, *pairs)
    return Evaluation(knn.top1, scores.rankme, scores.alignment, scores.uniformity)
