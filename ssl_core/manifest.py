"""The dataset manifest: one row per ingested image.

The ingest stage writes it and every later stage reads images only through it, so
the manifest (and its hash) identifies the data a model was trained on.

Columns: ``path`` (relative to the manifest's folder, POSIX separators), ``sha256``
of the file bytes, ``label`` (class name, empty when unlabeled), ``split``
(``train``, ``test``, ...), ``width`` and ``height`` in pixels.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class ManifestRecord:
    """One image of the dataset."""

    path: str
    sha256: str
    label: str | None
    split: str
    width: int
    height: int


COLUMNS = [f.name for f in fields(ManifestRecord)]


def write_manifest(records: list[ManifestRecord], path: Path) -> None:
    """Writes records sorted by path, so the file is byte-identical across runs."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in sorted(records, key=lambda r: r.path):
            row = asdict(record)
            row["label"] = row["label"] or ""
            writer.writerow(row)


def read_manifest(path: Path) -> list[ManifestRecord]:
    """Reads a manifest written by :func:`write_manifest`.

    Raises:
        FileNotFoundError: with a hint to run the ingest stage.
        ValueError: if the header is not the expected one.
    """
    if not path.is_file():
        raise FileNotFoundError(f"No manifest at {path}: run the ingest stage first (`sslpipe ingest`).")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}, expected {COLUMNS}.")
        return [
            ManifestRecord(
                path=row["path"],
                sha256=row["sha256"],
                label=row["label"] or None,
                split=row["split"],
                width=int(row["width"]),
                height=int(row["height"]),
            )
            for row in reader
        ]


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
