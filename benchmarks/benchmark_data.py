"""The datasets the benchmarks train on, and a manifest of the (class-balanced) part of one a run uses."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, write_manifest


@dataclass(frozen=True)
class DatasetSpec:
    archive: str
    top: str
    train_split: str
    test_split: str
    image_size: int
    backbone: str
    blur_prob: float
    dino_local_crops: int  # DINO's local crops (half the side) beside its 2 global crops


DATASETS = {
    # The lightly CIFAR-10 benchmark: ResNet-18 with the CIFAR stem, no blur at 32 px, and DINO
    # on its 2 global crops only (its DINOCollateFunction takes n_local_views=0 there).
    "cifar10": DatasetSpec("cifar10-jpeg.tar.gz", "cifar10", "train", "test", 32, "resnet18_cifar", 0.0, 0),
    # The lightly Imagenette benchmark at 128 px: a torchvision ResNet-18, blur on, DINO with
    # lightly's default 6 local crops of 64 px.
    "imagenette": DatasetSpec("imagenette-128.tar.gz", "imagenette", "train", "val", 128, "resnet18", 0.5, 6),
}


def prepare(
    spec: DatasetSpec, datasets_dir: Path, work_dir: Path, train_per_class: int | None, test_per_class: int | None
) -> Path:
    """Extracts the archive (once) and writes a manifest of the selected images."""
    extracted = work_dir / "data"
    if not (extracted / spec.top).is_dir():
        extracted.mkdir(parents=True, exist_ok=True)
        with tarfile.open(datasets_dir / spec.archive) as archive:
            archive.extractall(extracted, filter="data")
    root = extracted / spec.top
    quota = {spec.train_split: train_per_class, spec.test_split: test_per_class}
    records = []
    for split, limit in quota.items():
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for image in sorted(class_dir.iterdir())[:limit]:
                # sha256 is for provenance in the pipeline; the benchmark reads fixed archives.
                records.append(ManifestRecord(image.relative_to(root).as_posix(), "", class_dir.name, split, 0, 0))
    write_manifest(records, root / MANIFEST_NAME)
    return root
