"""Fixtures shared by every test folder: real CIFAR-10 images (see tests/datasets.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.datasets import FULL, REPO_ROOT, cifar10_archive, cut_cifar10

# Seconds per test file in CI, for the order of the run (scripts/test_durations.py writes it).
FILE_DURATIONS = Path(__file__).with_name("file_durations.json")


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
    and runs the longest files first.

    A test that reads all of CIFAR-10 trains or embeds thousands of images: so ``-m "not slow"``
    stays fast, and runs on a fresh clone without ``../shared`` skipping nothing. A test marked
    ``cuda`` says only that: CI has no GPU and skips it, and ``benchmarks/gpu_session.sh`` runs
    ``pytest -m cuda`` on a lent one.

    The order is for CI's two xdist workers, which take one file at a time in this order
    (``.ci/run``: ``--dist loadfile --no-loadscope-reorder``): the long files start first and the
    short ones fill in around them (longest processing time first), so that both workers end
    together. How long a file takes is what ``tests/file_durations.json`` says (refreshed by
    ``scripts/test_durations.py`` from a run's JUnit report); a file it does not list yet goes
    after those it does, the files with more slow tests first. xdist's own order, most tests
    first, left the 5-minute end-to-end file, which has few tests, for late, and one worker 70 s
    behind the other; ordering by the number of slow tests still started the 90-s unlabeled
    end-to-end file (2 tests) after files a third as long (30 s of makespan in a simulation
    over the measured file times).
    """
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    cuda_available = torch.cuda.is_available()
    for item in items:
        if "full_cifar_archive" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("cuda") and not cuda_available:
            item.add_marker(no_cuda)
    slow_tests_in = Counter(item.path for item in items if item.get_closest_marker("slow"))
    seconds = json.loads(FILE_DURATIONS.read_text())

    def longest_first(item: pytest.Item) -> tuple[float, int]:
        return -seconds.get(item.path.relative_to(REPO_ROOT).as_posix(), 0.0), -slow_tests_in[item.path]

    items.sort(key=longest_first)  # stable: each file stays whole, in its own order
