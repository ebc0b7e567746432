"""Real CIFAR-10 images for the tests, on any machine: the one place that finds them.

A test asks :func:`cifar10_archive` for an archive with at least N train and M
test images per class and gets the first source below that has them: all of
CIFAR-10 from ``../shared/datasets`` (developers and CI have that folder beside
the checkout), else the subset that ships with the repository (a user's fresh
clone). Both name their files ``<top>/<split>/<class>/NNNN.jpg`` and the subset is
the first 500 train and 100 test images of each class of the full archive, byte
for byte, so a test cannot tell which one it got.

When no source has enough images (only the full archive has 1,000 test images
per class), the test fails under ``CI=true``, where ``../shared`` is always
present, and is skipped elsewhere with the missing file as the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
CUT_SCRIPT = REPO_ROOT / "scripts" / "make_default_dataset.py"


@dataclass(frozen=True)
class CifarSource:
    """A CIFAR-10 JPEG archive and how many images of each class each split holds."""

    path: Path
    top: str  # the archive's top-level folder
    train_per_class: int
    test_per_class: int

    def has(self, train_per_class: int, test_per_class: int) -> bool:
        return self.train_per_class >= train_per_class and self.test_per_class >= test_per_class


# Counts as documented in ../shared/datasets/README.md and by make_default_dataset.py,
# which cut the shipped subset (tests/test_datasets.py checks the subset's).
FULL = CifarSource(SHARED_DATASETS / "cifar10-jpeg.tar.gz", "cifar10", 5000, 1000)
SHIPPED = CifarSource(REPO_ROOT / "data" / "default" / "cifar10-subset.tar.gz", "cifar10-subset", 500, 100)
SOURCES = (FULL, SHIPPED)  # in order of preference


def in_ci() -> bool:
    """CI sets ``CI=true`` and always has ``../shared``: a test that needs it must fail there, not skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def cifar10_archive(train_per_class: int, test_per_class: int) -> Path:
    """A CIFAR-10 archive with at least this many images of each class in each split.

    Fails the calling test under ``CI=true`` when no source has enough; skips it
    elsewhere, naming the missing file.
    """
    for source in SOURCES:
        if source.has(train_per_class, test_per_class) and source.path.is_file():
            return source.path
    missing = [source for source in SOURCES if source.has(train_per_class, test_per_class)]
    if not missing:
        raise ValueError(
            f"CIFAR-10 has {FULL.train_per_class} train + {FULL.test_per_class} test images per class, "
            f"not {train_per_class} + {test_per_class}"
        )
    reason = (
        f"{' and '.join(str(source.path) for source in missing)} not found: this test asks for "
        f"{train_per_class} train + {test_per_class} test images per CIFAR-10 class"
    )
    if SHIPPED not in missing:
        reason += f"; the shipped subset has {SHIPPED.train_per_class} + {SHIPPED.test_per_class}"
    if in_ci():
        pytest.fail(f"{reason} (CI=true: CI must run every test)")
    pytest.skip(reason)


def cut_cifar10(output: Path, train_per_class: int, test_per_class: int, top: str = SHIPPED.top) -> Path:
    """A class-balanced ``.tar.gz`` of the first N/M images per class, cut by the script that cut the subset.

    Args:
        output: the ``.tar.gz`` to write.
        train_per_class: train images of each class (files ``0000.jpg`` onwards).
        test_per_class: test images of each class.
        top: the top-level folder inside the archive (``cifar10`` for the benchmark's layout).
    """
    source = cifar10_archive(train_per_class, test_per_class)
    subprocess.run(
        [
            sys.executable,
            str(CUT_SCRIPT),
            str(source),
            str(output),
            "--train-per-class",
            str(train_per_class),
            "--test-per-class",
            str(test_per_class),
            "--top",
            top,
        ],
        check=True,
        capture_output=True,
    )
    return output


def random_ingested_folder(root: Path, count: int, width: int = 32, height: int = 32) -> Path:
    """``count`` random RGB images in ``root/images`` and an ingest-style manifest (split train, no labels).

    For tests of how a stage feeds training, where pixels need not mean anything.
    """
    import numpy as np
    from PIL import Image

    from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, write_manifest

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        records.append(ManifestRecord(f"images/{i}.png", "0" * 64, None, "train", width, height))
    write_manifest(records, root / MANIFEST_NAME)
    return root
