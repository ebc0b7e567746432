"""Shared fixtures: a tiny real image dataset cut from the shared CIFAR-10 archive."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from PIL import Image

from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, sha256_file, write_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
CIFAR_ARCHIVE = "cifar10-jpeg.tar.gz"
NUM_CLASSES = 8
IMAGES_PER_CLASS = 8


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """Path of the shared CIFAR-10 JPEG archive; skips the test when it is absent."""
    archive = SHARED_DATASETS / CIFAR_ARCHIVE
    if not archive.is_file():
        pytest.skip(f"{archive} not found: these tests need the shared datasets folder beside the checkout.")
    return archive


@pytest.fixture(scope="session")
def cifar_folder(cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ingested-style folder: 8 images of each of 8 CIFAR-10 train classes plus ``manifest.csv``."""
    root = tmp_path_factory.mktemp("cifar_tiny")
    wanted = {f"{i:04d}.jpg" for i in range(IMAGES_PER_CLASS)}
    per_class: dict[str, int] = {}
    records = []
    with tarfile.open(cifar_archive) as archive:
        for member in archive:
            parts = member.name.split("/")  # cifar10/train/<class>/<file>
            if len(parts) != 4 or parts[1] != "train" or parts[3] not in wanted or not member.isfile():
                continue
            label = parts[2]
            if label not in per_class and len(per_class) == NUM_CLASSES:
                continue
            per_class[label] = per_class.get(label, 0) + 1
            relative = f"train/{label}/{parts[3]}"
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            with Image.open(target) as image:
                width, height = image.size
            records.append(ManifestRecord(relative, sha256_file(target), label, "train", width, height))
            if len(per_class) == NUM_CLASSES and all(n == IMAGES_PER_CLASS for n in per_class.values()):
                break
    assert len(records) == NUM_CLASSES * IMAGES_PER_CLASS, f"found only {len(records)} images in {cifar_archive}"
    write_manifest(records, root / MANIFEST_NAME)
    return root


@pytest.fixture(scope="session")
def cifar_image(cifar_folder: Path) -> Image.Image:
    """One real 32x32 CIFAR-10 JPEG as an RGB PIL image."""
    path = next(iter(sorted(cifar_folder.glob("train/*/*.jpg"))))
    with Image.open(path) as image:
        return image.convert("RGB")
