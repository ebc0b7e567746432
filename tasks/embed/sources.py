"""What batch embedding reads: the images of a folder, an archive or an ingested dataset, one at a time.

The readers of the ingest stage, streamed: a folder is walked as ingest walks it
(:func:`tasks.ingest.iter_folder`: links, FIFOs and devices refused, never
followed), an archive is read member by member (a tar as a forward-only stream,
never extracted to disk) with ingest's checks on member names, and an ingested or
curated folder through its ``manifest.csv``, row by row. Labels and splits come
from the path as ingest reads them (``[split/]class/image``, ``unlabeled/``), or
from the manifest. Nothing is held but the file being read, so a million images
cost what one does.
"""

from __future__ import annotations

import csv
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ssl_core.manifest import COLUMNS as MANIFEST_COLUMNS
from ssl_core.manifest import MANIFEST_NAME
from tasks.errors import UserError
from tasks.ingest import (
    ARCHIVE_SUFFIXES,
    SPLIT_NAMES,
    IngestReport,
    _read_regular_file,
    iter_folder,
    split_and_label,
    unsafe_member_reason,
)

# A member is read into memory whole, so one claiming more (a gzip bomb) is refused unread.
MAX_MEMBER_BYTES = 256 * 1024 * 1024


class SourceError(UserError):
    """``--data`` cannot be read: missing, empty, of an unknown kind, a broken archive or manifest."""


@dataclass(frozen=True)
class SourceImage:
    """One file of ``--data``: its path there, its label and split where known, and its bytes."""

    path: str
    label: str | None
    split: str | None
    data: bytes


def source_kind(data: Path) -> str:
    """``manifest`` (a folder with a manifest.csv), ``folder`` or ``archive``.

    Raises:
        SourceError: if ``data`` is missing, an empty folder, or neither a folder nor an archive.
    """
    if data.is_dir():
        if (data / MANIFEST_NAME).is_file():
            return "manifest"
        if not any(data.iterdir()):
            raise SourceError(f"--data {data}: the folder is empty.")
        return "folder"
    if data.is_file() and data.name.lower().endswith(ARCHIVE_SUFFIXES):
        return "archive"
    what = "is neither a folder nor an archive" if data.exists() else "does not exist"
    raise SourceError(
        f"--data {data} {what}: give an image folder, an ingested folder or a {'/'.join(ARCHIVE_SUFFIXES)}."
    )


def open_source(data: Path, refused: IngestReport) -> tuple[int | None, Iterator[SourceImage]]:
    """(how many files, when a cheap pass can tell; the files, one at a time).

    Files refused unread (links, special files, unsafe or oversized members) are
    appended to ``refused.refused`` as the iterator meets them.

    Raises:
        SourceError: see :func:`source_kind`; also a manifest with other columns, an unreadable archive.
    """
    kind = source_kind(data)
    if kind == "manifest":
        return count_manifest_rows(data), iter_manifest(data, refused)
    if kind == "archive":
        names = list_archive(data)
        return names.count, iter_archive(data, names.prefix, refused)
    return None, (
        _labeled(str(file.relative_path), file.relative_path, file.data) for file in iter_folder(data, refused)
    )


def _labeled(path: str, relative: PurePosixPath, data: bytes) -> SourceImage:
    split, label = split_and_label(relative, "")  # no split folder: unknown, not ingest's default split
    return SourceImage(path, label, split or None, data)


def count_manifest_rows(root: Path) -> int:
    with open(root / MANIFEST_NAME, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != MANIFEST_COLUMNS:
            raise SourceError(f"--data {root / MANIFEST_NAME}: columns {header}, expected {MANIFEST_COLUMNS}.")
        return sum(1 for _ in reader)


def iter_manifest(root: Path, refused: IngestReport) -> Iterator[SourceImage]:
    """The images a manifest lists (paths relative to its folder), row by row."""
    with open(root / MANIFEST_NAME, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            reason = unsafe_member_reason(row["path"])
            if reason is None:
                # As a folder's files are read: a link or a FIFO listed there is refused, never followed.
                data, reason = _read_regular_file(root / row["path"])
            if reason is None:
                yield SourceImage(row["path"], row["label"] or None, row["split"] or None, data)
            else:
                refused.refused.append({"member": row["path"], "reason": reason})


@dataclass(frozen=True)
class ArchiveNames:
    count: int  # members that will be read: regular files with safe names
    prefix: PurePosixPath | None  # the one top folder wrapping everything, stripped for labels


def list_archive(path: Path) -> ArchiveNames:
    """One pass over the member headers, no member read, in constant memory."""
    count, tops, nested = 0, set(), True
    for name, _, regular in _archive_members(path, read=False):
        if unsafe_member_reason(name) is None:
            parts = PurePosixPath(name).parts
            count += regular
            nested = nested and len(parts) > 1
            if len(tops) < 2 and len(parts) > 1:
                tops.add(parts[0])
    # Stripped as the ingest stage strips it (tasks.ingest._common_top_folder); a split folder is no wrapper.
    top = next(iter(tops)) if len(tops) == 1 and nested else None
    return ArchiveNames(count, PurePosixPath(top) if top and top.lower() not in SPLIT_NAMES else None)


def iter_archive(path: Path, prefix: PurePosixPath | None, refused: IngestReport) -> Iterator[SourceImage]:
    """Regular-file members one at a time, each with its own name as its path (labels from the name less ``prefix``)."""
    for name, data, regular in _archive_members(path, read=True):
        reason = unsafe_member_reason(name) or (None if regular else "link or special file: never followed")
        if reason is None and data is None:
            reason = f"member larger than {MAX_MEMBER_BYTES // 2**20} MB: not read"
        if reason is not None:
            refused.refused.append({"member": name, "reason": reason})
            continue
        relative = PurePosixPath(name)
        yield _labeled(name, relative.relative_to(prefix) if prefix else relative, data)


def _archive_members(path: Path, read: bool) -> Iterator[tuple[str, bytes | None, bool]]:
    """(name, bytes or None, is a regular file) of each non-folder member, in archive order.

    Bytes are None when not asked for, for a link or special file, and for a member over
    :data:`MAX_MEMBER_BYTES`.
    """
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        small = info.file_size <= MAX_MEMBER_BYTES  # zipfile never inflates past file_size
                        yield info.filename, archive.read(info) if read and small else None, True
            return
        # "r|*": a forward-only stream, so a .tar.gz is decompressed once and never seeked.
        with tarfile.open(path, mode="r|*") as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # tarfile keeps every header it read: a million of them, otherwise
                if member.isdir():
                    continue
                regular = member.isfile()  # links and devices can point anywhere on disk
                data = None
                if read and regular and member.size <= MAX_MEMBER_BYTES:
                    data = archive.extractfile(member).read()
                yield member.name, data, regular
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise SourceError(f"--data {path}: cannot read the archive ({error}).") from None
