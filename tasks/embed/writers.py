"""Where batch embedding writes: Parquet, or ``.npy`` + CSV, appended batch by batch and renamed when complete.

Parquet: columns ``path``, ``label`` (null where unknown), ``split`` (null where
unknown) and ``embedding`` (``fixed_size_list<float32>[D]``), with the model's URI
and version in the schema metadata. ``.npy``: the (N, D) float32 array, its header
rewritten with N at the end, and ``<stem>.csv`` beside it with ``path,label,split``
of row i on line i + 1. Every file is written under a ``.partial`` name and renamed
once complete: a killed job leaves no half file that looks whole.
"""

from __future__ import annotations

import csv
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.embed.sources import SourceImage

# ~16 MB of float32 at 512 dims: big enough for fast scans, small enough to hold while it fills.
ROW_GROUP_ROWS = 8192
PARTIAL_SUFFIX = ".partial"


class PartialFiles:
    """Files written under a ``.partial`` name, renamed to their own by :meth:`commit`, else removed."""

    def __init__(self, paths: list[Path]) -> None:
        self.final = paths
        self.partial = [path.with_name(path.name + PARTIAL_SUFFIX) for path in paths]

    def commit(self) -> list[Path]:
        for partial, final in zip(self.partial, self.final, strict=True):
            os.replace(partial, final)  # atomic on one file system: a reader sees the old file or the new one
        return self.final

    def discard(self) -> None:
        for partial in self.partial:
            partial.unlink(missing_ok=True)


class ParquetEmbeddingWriter:
    """Rows buffered up to ``row_group_rows``, then written as a row group."""

    @staticmethod
    def paths(out: Path) -> list[Path]:
        return [out]

    def __init__(self, out: Path, dim: int, lineage: dict[str, str], row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.files = PartialFiles(self.paths(out))
        self.dim, self.row_group_rows = dim, row_group_rows
        columns = [("path", pa.string()), ("label", pa.string()), ("split", pa.string())]
        self.schema = pa.schema([*columns, ("embedding", pa.list_(pa.float32(), dim))], metadata=lineage)
        self._writer = pq.ParquetWriter(self.files.partial[0], self.schema)
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.row_groups_written = 0

    def write(self, rows: list[SourceImage], vectors: np.ndarray) -> None:
        """Appends ``rows`` and their (n, D) ``vectors``."""
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))  # (n * D,)
        columns = [
            pa.array([row.path for row in rows], pa.string()),
            pa.array([row.label for row in rows], pa.string()),
            pa.array([row.split for row in rows], pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, self.dim),
        ]
        self._pending.append(pa.record_batch(columns, schema=self.schema))
        self._pending_rows += len(rows)
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, self.schema)
            self._writer.write_table(table, row_group_size=self.row_group_rows)
            self.row_groups_written += 1
            self._pending, self._pending_rows = [], 0

    def close(self) -> list[Path]:
        """Writes what is buffered and the footer; renames the file to its own name."""
        self._flush()
        self._writer.close()
        return self.files.commit()

    def discard(self) -> None:
        """Removes the unfinished file (nothing once closed)."""
        self._writer.close()
        self.files.discard()


# numpy's format 1.0: magic, version, header length, then a dict literal padded with spaces and ended by a
# newline, the whole a multiple of 64 bytes. A fixed length lets the header go first with 0 rows and be
# rewritten in place with N at the end; 128 bytes hold any shape of two 20-digit numbers.
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER_BYTES = 128


def npy_header(rows: int, dim: int) -> bytes:
    """The header of a (rows, dim) little-endian float32 ``.npy`` file."""
    text = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    length = _NPY_HEADER_BYTES - len(_NPY_MAGIC) - 2
    return _NPY_MAGIC + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


class NpyEmbeddingWriter:
    """``out.npy``: (N, D) float32, rows appended as they come; ``out.csv``: path, label, split of row i."""

    @staticmethod
    def paths(out: Path) -> list[Path]:
        return [out, out.with_suffix(".csv")]

    def __init__(self, out: Path, dim: int, lineage: dict[str, str], row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.files = PartialFiles(self.paths(out))
        self.dim, self.rows = dim, 0
        self._array = open(self.files.partial[0], "wb")
        self._array.write(npy_header(0, dim))
        self._table = open(self.files.partial[1], "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._table, lineterminator="\n")
        self._csv.writerow(["path", "label", "split"])

    def write(self, rows: list[SourceImage], vectors: np.ndarray) -> None:
        """Appends ``rows`` and their (n, D) ``vectors``."""
        self._array.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._csv.writerows((row.path, row.label or "", row.split or "") for row in rows)
        self.rows += len(rows)

    def close(self) -> list[Path]:
        """Writes the final row count into the header; renames both files to their own names."""
        self._array.seek(0)
        self._array.write(npy_header(self.rows, self.dim))
        self._array.close()
        self._table.close()
        return self.files.commit()

    def discard(self) -> None:
        """Removes the unfinished files (nothing once closed)."""
        self._array.close()
        self._table.close()
        self.files.discard()


WRITERS = {".parquet": ParquetEmbeddingWriter, ".npy": NpyEmbeddingWriter}
