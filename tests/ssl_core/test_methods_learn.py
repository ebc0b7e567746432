"""Every method learns: a short CPU run on real CIFAR-10 beats random-init features.

Each method trains a small conv net (:func:`tests.ssl_core.tiny.small_convnet`) for
3 epochs on 2,000 CIFAR-10 training images (200 per class) through the real
engine and views. The frozen backbone then embeds those 2,000 images as the kNN
bank and classifies all 10,000 test images (k=200, t=0.1, the lightly protocol);
it must beat the same backbone at initialization by at least ``MIN_GAIN``. With
10,000 queries, one standard error of an accuracy is about 0.4 points, and
measured gains are 2-5 points.

The settings are sized for 2,000 images and 45 steps, not for the 200-epoch
lightly recipe. Each departure was measured (issue 3's notes) and is explained
next to it in ``SHORT_RUNS``. Every method is built by the factory and trains
on its own views; a method that needs a teacher learns from the SimCLR backbone
trained here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ssl_core.augment import Normalization, eval_transform
from ssl_core.backbones import Backbone
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.engine import TrainConfig, train
from ssl_core.knn import knn_evaluate
from ssl_core.methods import (
    METHOD_NAMES,
    BarlowTwinsConfig,
    BYOLConfig,
    DINOConfig,
    DistillationConfig,
    MoCoConfig,
    MultiCropConfig,
    SimCLRConfig,
    SimSiamConfig,
    VICRegConfig,
)
from ssl_core.methods.factory import build_method, method_class
from ssl_core.teachers import Teacher
from tests.ssl_core.conftest import extract_cifar_folder
from tests.ssl_core.tiny import small_convnet

TRAIN_PER_CLASS = 200
TEST_PER_CLASS = 1000  # the whole CIFAR-10 test split
EPOCHS = 3
BATCH_SIZE = 128
SEED = 0
MIN_GAIN = 0.01
PRECISION = "bf16-mixed"  # 2-3x faster than fp32 on CPUs with bf16 support
WIDTH = 32
FEATURE_DIM = 8 * WIDTH
TEACHER = "simclr"  # what methods that need a teacher learn from: the SimCLR trained here


@dataclass(frozen=True)
class ShortRun:
    """A method's recipe for the short run and its peak learning rate (with the method's optimizer)."""

    recipe: object
    lr: float = 0.12


SHORT_RUNS = {
    "distillation": ShortRun(DistillationConfig()),
    "simclr": ShortRun(SimCLRConfig()),
    # The recipe's 4,096-key bank is twice this dataset: most keys would be stale
    # copies of the very images being contrasted (measured: no gain after 5 epochs).
    "moco": ShortRun(MoCoConfig(memory_bank_size=512)),
    "simsiam": ShortRun(SimSiamConfig()),
    # Its loss sums the d^2 = 2048^2 entries of a cross-correlation: its first gradient
    # norm is ~1000x SimCLR's (2627 vs 2.7). Under SGD at lr 0.12 the first step multiplied
    # the conv weight norms by 20-35 and kNN fell below random init at every lr from 0.01
    # to 0.24 (1e-4 passed). It trains with LARS, its default, at the common lr.
    "barlowtwins": ShortRun(BarlowTwinsConfig()),
    "byol": ShortRun(BYOLConfig()),
    # 2 local crops instead of 6 halve the cost; the mechanics are the same.
    "dino": ShortRun(replace(DINOConfig(), multicrop=MultiCropConfig(num_local_crops=2))),
    # Not scale-invariant: under SGD its loss became NaN within the first epoch at lr >= 0.03
    # (the sweep is in VICRegConfig's docstring). It trains with LARS, its default, at the common lr.
    "vicreg": ShortRun(VICRegConfig()),
}


def test_every_method_has_a_short_run() -> None:
    assert set(SHORT_RUNS) == set(METHOD_NAMES), "give each method its short-run recipe in SHORT_RUNS"


@pytest.fixture(scope="module")
def cifar_2000(full_cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 train and 10,000 test CIFAR-10 images as an ingested-style folder."""
    return extract_cifar_folder(
        full_cifar_archive, tmp_path_factory.mktemp("cifar_2000"), {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}
    )


def decoded(folder: Path, split: str) -> TensorDataset:
    """The split through the eval transform, decoded once: every kNN below reuses it."""
    dataset = ManifestDataset(folder, [split], eval_transform(32, Normalization()))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return TensorDataset(images, torch.tensor(dataset.labels))


class ShortRuns:
    """Trains each method once per module and reports its kNN top-1."""

    def __init__(self, folder: Path, work_dir: Path) -> None:
        self.folder = folder
        self.work_dir = work_dir
        self.bank = decoded(folder, "train")
        self.queries = decoded(folder, "test")
        self.backbones: dict[str, nn.Module] = {}

    def knn_top1(self, backbone: nn.Module) -> float:
        bank_x, bank_y = compute_embeddings(backbone, self.bank, 500, precision=PRECISION)
        query_x, query_y = compute_embeddings(backbone, self.queries, 500, precision=PRECISION)
        return knn_evaluate(bank_x, bank_y, query_x, query_y, num_classes=10, k=200, temperature=0.1).top1

    def random_init_backbone(self) -> nn.Module:
        torch.manual_seed(SEED)
        return small_convnet(WIDTH)

    def trained_backbone(self, name: str) -> nn.Module:
        if name not in self.backbones:
            self.backbones[name] = self._train(name)
        return self.backbones[name]

    def _train(self, name: str) -> nn.Module:
        """Trains ``name`` through the factory, its own views and the real engine, as the pipeline does."""
        teacher = None
        if method_class(name).needs_teacher:  # first: training it must not move the student's seed
            teacher = Teacher(self.trained_backbone(TEACHER), FEATURE_DIM, f"{TEACHER} short run")
        backbone = Backbone(self.random_init_backbone(), FEATURE_DIM, f"small_convnet({WIDTH})")
        dataset = ManifestDataset(self.folder, ["train"])
        run = SHORT_RUNS[name]
        method = build_method(name, backbone, run.recipe, teacher=teacher, num_images=len(dataset))
        dataset.transform = method.train_transform(method.view_config(32), Normalization())
        config = TrainConfig(
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            lr=run.lr,
            optimizer=method.optimizer,
            seed=SEED,
            device="cpu",
            precision=PRECISION,
        )
        history = train(method, dataset, config, self.work_dir / name)
        assert not history.epochs[-1].collapsed, f"{name} collapsed"
        return method.backbone


@pytest.fixture(scope="module")
def short_runs(cifar_2000: Path, tmp_path_factory: pytest.TempPathFactory) -> ShortRuns:
    return ShortRuns(cifar_2000, tmp_path_factory.mktemp("short_runs"))


@pytest.fixture(scope="module")
def random_init_top1(short_runs: ShortRuns) -> float:
    return short_runs.knn_top1(short_runs.random_init_backbone())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_short_cpu_run_beats_random_init_knn(name: str, short_runs: ShortRuns, random_init_top1: float) -> None:
    top1 = short_runs.knn_top1(short_runs.trained_backbone(name))
    print(f"{name}: kNN top-1 {top1:.4f}, random init {random_init_top1:.4f}")
    assert top1 >= random_init_top1 + MIN_GAIN, (
        f"{name}: kNN top-1 {top1:.4f} after {EPOCHS} epochs, random init {random_init_top1:.4f}"
    )
