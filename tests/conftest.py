"""Fixtures shared by every test folder: real CIFAR-10 images (see tests/datasets.py)."""

from __future__ import annotations

from collections import Counter
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
    """Marks ``slow`` every test that reads all of CIFAR-10, skips the ``cuda`` tests without a CUDA GPU,
    and runs the files with the most slow tests first.

    A test that reads all of CIFAR-10 trains or embeds thousands of images: so ``-m "not slow"``
    stays fast, and runs on a fresh clone without ``../shared`` skipping nothing. A test marked
    ``cuda`` says only that: CI has no GPU and skips it, and ``benchmarks/gpu_session.sh`` runs
    ``pytest -m cuda`` on a lent one.

    The order is for CI's two xdist workers, which take one file at a time in this order
    (``.ci/run``: ``--dist loadfile --no-loadscope-reorder``): the long files start first and the
    short ones fill in around them (longest processing time first), so that both workers end
    together. xdist's own order, most tests first, left the 5-minute end-to-end file, which has
    few tests, for late, and one worker 70 s behind the other.
    """
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    cuda_available = torch.cuda.is_available()
    for item in items:
        if "full_cifar_archive" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("cuda") and not cuda_available:
            item.add_marker(no_cuda)
    slow_tests_in = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests_in[item.path])  # stable: each file stays whole, in its own order
