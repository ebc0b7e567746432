"""The tests' CIFAR-10 sources: the shipped subset is what they assume, and a missing archive is never silent."""

from __future__ import annotations

import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from tests import datasets
from tests.datasets import FULL, SHIPPED, cifar10_archive


def test_the_shipped_subset_has_the_layout_and_counts_the_tests_rely_on() -> None:
    with tarfile.open(SHIPPED.path) as archive:
        names = [member.name for member in archive if member.isfile()]
    counts = Counter(tuple(name.split("/")[:3]) for name in names)  # (top, split, class) -> images
    assert {top for top, _, _ in counts} == {SHIPPED.top}
    assert len({label for _, _, label in counts}) == 10
    assert {count for (_, split, _), count in counts.items() if split == "train"} == {SHIPPED.train_per_class}
    assert {count for (_, split, _), count in counts.items() if split == "test"} == {SHIPPED.test_per_class}


@pytest.fixture
def full_archive_at(monkeypatch: pytest.MonkeyPatch):
    """Points the full archive's source at another path for one test."""

    def point(path: Path) -> None:
        monkeypatch.setattr(datasets, "SOURCES", (replace(FULL, path=path), SHIPPED))

    return point


def test_the_full_archive_is_preferred_when_present(full_archive_at, tmp_path: Path) -> None:
    (tmp_path / "cifar10-jpeg.tar.gz").touch()
    full_archive_at(tmp_path / "cifar10-jpeg.tar.gz")
    assert cifar10_archive(8, 0) == tmp_path / "cifar10-jpeg.tar.gz"


def test_without_the_full_archive_the_shipped_subset_serves_what_it_can(
    full_archive_at, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_archive_at(tmp_path / "cifar10-jpeg.tar.gz")
    monkeypatch.delenv("CI", raising=False)
    assert cifar10_archive(SHIPPED.train_per_class, SHIPPED.test_per_class) == SHIPPED.path
    with pytest.raises(
        pytest.skip.Exception,
        match=r"cifar10-jpeg.tar.gz not found: this test asks for 200 train "
        r"\+ 1000 test images per CIFAR-10 class; the shipped subset",
    ):
        cifar10_archive(200, 1000)


def test_in_ci_a_missing_archive_fails_the_test(
    full_archive_at, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_archive_at(tmp_path / "cifar10-jpeg.tar.gz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cifar10-jpeg.tar.gz not found.*CI=true"):
        cifar10_archive(200, 1000)
