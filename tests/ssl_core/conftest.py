"""Shared fixtures: real image folders cut from a CIFAR-10 archive (see tests/datasets.py)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, sha256_file, write_manifest
from tests.datasets import cifar10_archive

NUM_CLASSES = 8
IMAGES_PER_CLASS = 8


def extract_cifar_folder(archive_path: Path, root: Path, per_class: dict[str, int], num_classes: int = 10) -> Path:
    """Writes an ingested-style folder (images + ``manifest.csv``) cut from a CIFAR-10 archive.

    Keeps files ``0000.jpg`` .. ``{n-1}.jpg`` of each of the first ``num_classes``
    classes (sorted by name) for each split ``per_class`` names, so the cut is
    class-balanced and the same on every machine.
    """
    records = []
    with tarfile.open(archive_path) as archive:
        for member in archive:
            parts = member.name.split("/")  # <top>/<split>/<class>/<NNNN>.jpg
            if len(parts) != 4 or not member.isfile() or parts[1] not in per_class:
                continue
            _, split, label, filename = parts
            if int(Path(filename).stem) >= per_class[split]:
                continue
            relative = f"{split}/{label}/{filename}"
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            records.append((relative, label, split))
    classes = sorted({label for _, label, _ in records})[:num_classes]
    manifest = []
    for relative, label, split in sorted(records):
        if label in classes:
            with Image.open(root / relative) as image:
                width, height = image.size
            manifest.append(ManifestRecord(relative, sha256_file(root / relative), label, split, width, height))
    expected = num_classes * sum(per_class.values())
    assert len(manifest) == expected, f"found {len(manifest)} of {expected} images in {archive_path}"
    write_manifest(manifest, root / MANIFEST_NAME)
    return root


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ingested-style folder: 8 train images of each of 8 CIFAR-10 classes."""
    return extract_cifar_folder(
        cifar10_archive(IMAGES_PER_CLASS, 0),
        tmp_path_factory.mktemp("cifar_tiny"),
        {"train": IMAGES_PER_CLASS},
        NUM_CLASSES,
    )


@pytest.fixture
def single_thread():
    """One intra-op thread for tests of small tensors: they gain nothing from more, and on
    the shared 2-core machine a second, contended OpenMP thread made steps up to 10x slower.

    Use it with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cifar_image(cifar_folder: Path) -> Image.Image:
    """One real 32x32 CIFAR-10 JPEG as an RGB PIL image."""
    path = next(iter(sorted(cifar_folder.glob("train/*/*.jpg"))))
    with Image.open(path) as image:
        return image.convert("RGB")
