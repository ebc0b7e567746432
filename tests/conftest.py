"""Fixtures shared by every test folder: real images from ../shared/datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
CIFAR_ARCHIVE = SHARED_DATASETS / "cifar10-jpeg.tar.gz"


def make_cifar_subset(output: Path, train_per_class: int, test_per_class: int) -> Path:
    """A class-balanced CIFAR-10 .tar.gz cut by the same script as the shipped default."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"{CIFAR_ARCHIVE} not found (tests use the shared datasets folder beside the checkout)")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_default_dataset.py"), str(CIFAR_ARCHIVE), str(output),
         "--train-per-class", str(train_per_class), "--test-per-class", str(test_per_class)],
        check=True, capture_output=True,
    )
    return output


@pytest.fixture(scope="session")
def tiny_cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real CIFAR-10 JPEGs: 20 train + 10 test per class, as a .tar.gz."""
    return make_cifar_subset(tmp_path_factory.mktemp("data") / "tiny.tar.gz", 20, 10)
