"""Datasets over an ingested folder (images + ``manifest.csv``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, read_manifest

UNLABELED = -1


class ManifestDataset(Dataset):
    """Images listed in a manifest, optionally restricted to some splits.

    Items are ``(transform(image), label_index)``; ``label_index`` is -1 for
    unlabeled images. Class indices follow the sorted class names of the *whole*
    manifest, so train and test splits agree on them.

    Args:
        root: the ingested folder holding ``manifest.csv``.
        splits: keep only these splits; ``None`` keeps every image.
        transform: applied to the RGB PIL image.
    """

    def __init__(
        self,
        root: Path,
        splits: list[str] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        all_records = read_manifest(self.root / MANIFEST_NAME)
        self.class_names = sorted({r.label for r in all_records if r.label is not None})
        self._class_index = {name: i for i, name in enumerate(self.class_names)}
        self.records: list[ManifestRecord] = [r for r in all_records if splits is None or r.split in splits]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def label_index(self, record: ManifestRecord) -> int:
        return UNLABELED if record.label is None else self._class_index[record.label]

    @property
    def labels(self) -> list[int]:
        return [self.label_index(r) for r in self.records]

    @property
    def is_fully_labeled(self) -> bool:
        return bool(self.records) and all(r.label is not None for r in self.records)

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.root / self.records[index].path) as image:
            return image.convert("RGB")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load_image(index)
        sample = self.transform(image) if self.transform is not None else image
        return sample, self.label_index(self.records[index])


def available_splits(root: Path) -> list[str]:
    """Split names present in an ingested folder's manifest."""
    return sorted({r.split for r in read_manifest(Path(root) / MANIFEST_NAME)})
