"""Fixtures shared by every test folder: real CIFAR-10 images (see tests/datasets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.datasets import FULL, cifar10_archive, cut_cifar10


@pytest.fixture(scope="session")
def tiny_cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real CIFAR-10 JPEGs: 20 train + 10 test per class, as a .tar.gz (top folder ``cifar10-subset``)."""
    return cut_cifar10(tmp_path_factory.mktemp("data") / "tiny.tar.gz", 20, 10)


@pytest.fixture(scope="session")
def full_cifar_archive() -> Path:
    """All of CIFAR-10 (``../shared/datasets/cifar10-jpeg.tar.gz``), for tests that need more than the shipped subset.

    Absent, it fails the test under ``CI=true`` and skips it elsewhere, with the reason.
    """
    return cifar10_archive(FULL.train_per_class, FULL.test_per_class)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``slow`` every test that reads all of CIFAR-10, and skips the ``cuda`` tests without a CUDA GPU.

    A test that reads all of CIFAR-10 trains or embeds thousands of images: so ``-m "not slow"``
    stays fast, and runs on a fresh clone without ``../shared`` skipping nothing. A test marked
    ``cuda`` says only that: CI has no GPU and skips it, and ``benchmarks/gpu_session.sh`` runs
    ``pytest -m cuda`` on a lent one.
    """
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    cuda_available = torch.cuda.is_available()
    for item in items:
        if "full_cifar_archive" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("cuda") and not cuda_available:
            item.add_marker(no_cuda)
