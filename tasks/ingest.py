"""Stage 1, ingest: an image source -> ``images/`` + ``manifest.csv`` + a report.

Sources: an image folder (``[split/]class/image`` or flat and unlabeled), a
.tar/.tar.gz/.tgz/.zip archive of one, or torchvision's CIFAR10. Every file is
decoded; one that cannot be is copied to ``quarantine/`` and listed with its reason
in ``ingest_report.json``: bad input never crashes the stage and is never dropped
silently. Archive members whose path would land outside the output folder
(absolute paths, ``..``, links) are refused and reported the same way, and so are
symbolic links, FIFOs, sockets and devices inside a source folder: ingest never
reads outside its source. Only ``ingest.source`` itself may be a link to a folder
(the user named it on purpose); links below it are never followed.

Labels and splits come from the path: a first folder named like a split
(train/test/val/...) gives the split, the image's parent folder its label. Images
directly in the source (or its split folders) and images under a folder named
``unlabeled`` (as in STL-10) have no label: a few labeled class folders can sit next
to many unlabeled images.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, sha256_file, write_manifest
from tasks.errors import UserError
from tasks.layout import INGEST_REPORT
from tasks.params import IngestParams, Params

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train", "test", "val", "valid", "validation"}
# Images below a folder of this name carry no label (STL-10's convention); their split is the default one.
UNLABELED_FOLDER = "unlabeled"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
REPORT_NAME = INGEST_REPORT
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class IngestError(UserError):
    """The source cannot be ingested at all (missing, empty, unreadable)."""


@dataclass(frozen=True)
class SourceFile:
    """One file of the source: its path inside the source and a way to read it."""

    relative_path: PurePosixPath
    data: bytes


@dataclass
class IngestReport:
    source: str
    num_images: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    num_unlabeled: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    manifest_sha256: str = ""


def main(params: Params, args: argparse.Namespace) -> None:
    run(params.ingest, args.out)


def run(params: IngestParams, out_dir: Path) -> IngestReport:
    """Ingests ``params.source`` into ``out_dir`` (emptied first).

    Raises:
        IngestError: if the source is missing, of an unknown kind, or yields no image.
    """
    source_format = detect_format(params)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    report = IngestReport(source=params.source)

    if source_format == "torchvision-cifar10":
        files = iter_torchvision_cifar10(Path(params.source))
    elif source_format == "archive":
        files = iter_archive(Path(params.source), report)
    else:
        files = iter_folder(Path(params.source), report)

    records = []
    for file in tqdm(files, desc="ingest", unit="img", mininterval=1.0):
        record = _ingest_file(file, params, out_dir, report)
        if record is not None:
            records.append(record)

    if not records:
        raise IngestError(
            f"No decodable image in {params.source} ({len(report.quarantined)} quarantined, "
            f"{len(report.refused)} refused): point ingest.source at a folder or archive of images."
        )
    manifest_path = out_dir / MANIFEST_NAME
    write_manifest(records, manifest_path)
    _summarize(report, records, manifest_path)
    (out_dir / REPORT_NAME).write_text(json.dumps(asdict(report), indent=2) + "\n")
    if report.quarantined or report.refused:
        logger.warning(
            "%d files quarantined, %d files or archive members refused: see %s",
            len(report.quarantined),
            len(report.refused),
            out_dir / REPORT_NAME,
        )
    return report


def detect_format(params: IngestParams) -> str:
    source = Path(params.source)
    if params.format == "torchvision-cifar10":
        return params.format
    if not source.exists():
        raise IngestError(f"ingest.source {params.source!r} does not exist: set it to an image folder or archive.")
    if params.format != "auto":
        return params.format
    if source.is_dir():
        return "folder"
    if source.name.lower().endswith(ARCHIVE_SUFFIXES):
        return "archive"
    raise IngestError(
        f"ingest.source {params.source!r} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})."
    )


# A link can point anywhere on disk (/etc/passwd, another dataset, its own parent).
SYMLINK_REASON = "symbolic link: never followed"
# O_NOFOLLOW makes opening a link fail, closing the race between the check and the open;
# O_NONBLOCK keeps a FIFO swapped in after the check from blocking the open. 0 where absent.
_SAFE_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
)


def iter_folder(root: Path, report: IngestReport) -> Iterator[SourceFile]:
    """Regular files under ``root``, in sorted path order, read without following links.

    ``root`` itself may be a link to a folder: naming it is the user's choice. Below
    it, symbolic links (to files or folders) are never followed, not even stat'ed
    through, and neither FIFOs, sockets nor devices are read: each is refused and
    recorded in ``report.refused``. Hard links are regular files and are read.

    Raises:
        IngestError: if ``root`` is empty.
    """
    if not any(root.iterdir()):
        raise IngestError(f"ingest.source folder {root} is empty.")
    # Depth-first with each folder's entries sorted by name: the order of sorting every path.
    stack = _sorted_entries(root, PurePosixPath(), report)[::-1]
    while stack:
        entry, relative = stack.pop()
        if entry.is_symlink():
            report.refused.append({"member": str(relative), "reason": SYMLINK_REASON})
        elif entry.is_dir(follow_symlinks=False):
            stack.extend(_sorted_entries(Path(entry.path), relative, report)[::-1])
        elif entry.is_file(follow_symlinks=False):
            data, reason = _read_regular_file(Path(entry.path))
            if reason is None:
                yield SourceFile(relative, data)
            else:
                report.refused.append({"member": str(relative), "reason": reason})
        else:
            report.refused.append({"member": str(relative), "reason": _special_file_reason(entry)})


def _sorted_entries(
    folder: Path, relative: PurePosixPath, report: IngestReport
) -> list[tuple[os.DirEntry[str], PurePosixPath]]:
    """(entry, path inside the source) of each entry of ``folder``, sorted by name."""
    try:
        with os.scandir(folder) as entries:
            found = sorted(entries, key=lambda entry: entry.name)
    except OSError as error:  # a sub-folder without read permission must not crash the stage
        report.refused.append({"member": str(relative), "reason": f"folder cannot be listed ({error.strerror})"})
        return []
    return [(entry, relative / entry.name) for entry in found]


def _read_regular_file(path: Path) -> tuple[bytes, str | None]:
    """(bytes, None) if ``path`` is still a regular file when opened, else (b"", reason)."""
    try:
        fd = os.open(path, _SAFE_OPEN_FLAGS)
    except OSError as error:
        # ELOOP: replaced by a link after the directory was listed.
        return b"", SYMLINK_REASON if os.path.islink(path) else f"cannot be read ({error.strerror})"
    with os.fdopen(fd, "rb") as file:
        # The open may have raced with a swap to a FIFO or device; fstat looks at what was opened.
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return b"", "not a regular file when opened: never read"
        return file.read(), None


def _special_file_reason(entry: os.DirEntry[str]) -> str:
    """Why a FIFO, socket or device in a source folder is refused."""
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:  # gone since the folder was listed: still never read
        mode = 0
    kind = (
        "FIFO"
        if stat.S_ISFIFO(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "special file"
    )
    # Reading a FIFO blocks until a writer appears; a device can be endless (/dev/zero).
    return f"{kind}: never read"


def iter_archive(path: Path, report: IngestReport) -> Iterator[SourceFile]:
    """Regular-file members of a tar or zip archive, streamed one at a time.

    Unsafe members (see :func:`unsafe_member_reason`) and links are refused and
    reported. A single top-level folder wrapping everything is stripped.
    """
    names = [name for name, _ in _archive_members(path, read=False)]
    prefix = _common_top_folder([PurePosixPath(n) for n in names if unsafe_member_reason(n) is None])
    for name, data in _archive_members(path, read=True):
        reason = unsafe_member_reason(name) or (None if data is not None else "link or special file: never followed")
        if reason:
            report.refused.append({"member": name, "reason": reason})
            continue
        relative = PurePosixPath(name)
        if prefix is not None:
            relative = relative.relative_to(prefix)
        yield SourceFile(relative, data)


def _archive_members(path: Path, read: bool) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of each non-folder member; bytes is None for links/devices or if not read."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        yield info.filename, archive.read(info) if read else None
        else:
            with tarfile.open(path) as archive:
                for member in archive:
                    if member.isdir():
                        continue
                    regular = member.isfile()  # links and devices can point anywhere on disk
                    yield member.name, archive.extractfile(member).read() if read and regular else None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise IngestError(f"Cannot read archive {path}: {error}") from None


def unsafe_member_reason(name: str) -> str | None:
    """Why an archive member must not be extracted, or None if it is safe."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path would land outside the output folder"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in path would land outside the output folder"
    return None


def _common_top_folder(paths: list[PurePosixPath]) -> PurePosixPath | None:
    """The single top-level folder all members share (archives usually wrap one)."""
    tops = {p.parts[0] for p in paths if len(p.parts) > 1}
    if len(tops) == 1 and all(len(p.parts) > 1 for p in paths) and next(iter(tops)).lower() not in SPLIT_NAMES:
        return PurePosixPath(next(iter(tops)))
    return None


def iter_torchvision_cifar10(root: Path) -> Iterator[SourceFile]:
    """CIFAR-10 via torchvision: a local copy under ``root``, else a download."""
    from torchvision.datasets import CIFAR10

    for train, split in ((True, "train"), (False, "test")):
        try:
            dataset = CIFAR10(str(root), train=train, download=False)
        except RuntimeError:
            try:
                dataset = CIFAR10(str(root), train=train, download=True)
            except Exception as error:  # URLError, HTTPError, socket errors...
                raise IngestError(
                    f"CIFAR10 is not under {root} and could not be downloaded ({error}). "
                    f"Copy cifar-10-python.tar.gz there, or use an image folder."
                ) from None
        counters: dict[int, int] = {}
        for image, label in zip(dataset.data, dataset.targets, strict=True):
            index = counters.get(label, 0)
            counters[label] = index + 1
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")  # lossless
            yield SourceFile(PurePosixPath(split, CIFAR10_CLASSES[label], f"{index:05d}.png"), buffer.getvalue())


def split_and_label(relative: PurePosixPath, default_split: str) -> tuple[str, str | None]:
    parts = relative.parts
    split = default_split
    if len(parts) > 1 and parts[0].lower() in SPLIT_NAMES:
        split, parts = parts[0].lower(), parts[1:]
    if any(part.lower() == UNLABELED_FOLDER for part in parts[:-1]):
        return split, None
    label = parts[-2] if len(parts) >= 2 else None
    return split, label


def decode_error(data: bytes, max_pixels: int) -> tuple[str | None, tuple[int, int]]:
    """(None, (width, height)) if ``data`` is a fully decodable image, else (reason, (0, 0))."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                # Checked from the header, before any pixel is decoded.
                if image.width * image.height > max_pixels:
                    return (
                        f"DecompressionBomb: {image.width}x{image.height} pixels exceeds "
                        f"ingest.max_image_pixels = {max_pixels}"
                    ), (0, 0)
                image.load()  # decode every pixel: truncated files fail here, not in training
                return None, image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"{type(error).__name__}: {error}", (0, 0)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return f"corrupt image ({type(error).__name__}: {error})", (0, 0)


def _ingest_file(file: SourceFile, params: IngestParams, out_dir: Path, report: IngestReport) -> ManifestRecord | None:
    reason, (width, height) = decode_error(file.data, params.max_image_pixels)
    if reason is not None:
        target = out_dir / "quarantine" / file.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        report.quarantined.append({"path": str(file.relative_path), "reason": reason})
        return None
    target = out_dir / "images" / file.relative_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(file.data)
    split, label = split_and_label(file.relative_path, params.default_split)
    return ManifestRecord(
        path=target.relative_to(out_dir).as_posix(),
        sha256=sha256_file(target),
        label=label,
        split=split,
        width=width,
        height=height,
    )


def _summarize(report: IngestReport, records: list[ManifestRecord], manifest_path: Path) -> None:
    report.num_images = len(records)
    for record in records:
        report.splits[record.split] = report.splits.get(record.split, 0) + 1
        if record.label is None:
            report.num_unlabeled += 1
        else:
            report.labels[record.label] = report.labels.get(record.label, 0) + 1
    report.splits = dict(sorted(report.splits.items()))
    report.labels = dict(sorted(report.labels.items()))
    report.manifest_sha256 = sha256_file(manifest_path)
