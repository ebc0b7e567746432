"""The batch embedding job: source -> batches of decoded, preprocessed images -> ONNX model -> writer.

Decoding and preprocessing (Pillow and numpy, which release the GIL for the heavy
part) run in ``workers`` threads, a few batches ahead of the model, which runs the
current batch meanwhile. At most ``workers`` batches wait, so memory is a few
batches' worth whatever the number of images.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssl_core.image_decode import UndecodableImageError, decode_image
from ssl_core.onnx_embedder import OnnxEmbedder, preprocess
from ssl_core.onnx_format import OnnxMetadata
from tasks.embed.sources import SourceImage, open_source, source_kind
from tasks.embed.writers import PARTIAL_SUFFIX, ROW_GROUP_ROWS, WRITERS, NpyEmbeddingWriter, ParquetEmbeddingWriter
from tasks.errors import UserError
from tasks.ingest import IngestReport
from tasks.params import IngestParams, Params

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
DEFAULT_WORKERS = 2
# The ingest stage's limit: a dataset that ingests also embeds.
DEFAULT_MAX_IMAGE_PIXELS = IngestParams.model_fields["max_image_pixels"].default
MODELS_PREFIX = "models:/"  # tasks.model_uris.MODELS_PREFIX, without importing mlflow to embed with a file


class EmbedError(UserError):
    """The job cannot run as asked: a bad --out, --model or option; the message says what to do."""


@dataclass(frozen=True)
class EmbeddingModel:
    """The ONNX file to run and where it came from: a file, or a registry URI and the version it resolved to."""

    onnx_path: Path
    source: str
    version: str | None = None


@dataclass
class EmbedReport:
    """``<out>.report.json``: what was embedded, what was skipped and why, with which model, how fast."""

    data: str
    source_kind: str
    out: list[str]
    model: str
    model_version: str | None
    embedding_dim: int
    image_size: int
    batch_size: int
    workers: int
    num_embedded: int = 0
    num_labeled: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    num_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    error: str | None = None  # why this run wrote no output (out is then empty; an earlier output is kept)


def main(params: Params, args: argparse.Namespace) -> None:
    """``sslpipe embed``."""
    given = {"batch_size": args.batch_size, "workers": args.workers}
    report = run(
        args.model or f"models:/{params.registry.model_name}@champion",
        args.data,
        args.out,
        cache_dir=args.cache,
        overwrite=args.overwrite,
        max_image_pixels=params.ingest.max_image_pixels,
        **{name: value for name, value in given.items() if value is not None},
    )
    print(
        f"{report.num_embedded} images embedded ({report.embedding_dim} dims, {report.images_per_second:.0f} img/s), "
        f"{report.num_skipped} skipped: {', '.join(report.out)}; report: {report_path(args.out)}"
    )


def run(
    model_source: str, data: Path, out: Path, cache_dir: Path, project_dir: Path = Path("."), **options
) -> EmbedReport:
    """Checks ``data`` and ``out`` before the model is downloaded, then :func:`embed_dataset` with ``options``."""
    check_options(options.get("batch_size", DEFAULT_BATCH_SIZE), options.get("workers", DEFAULT_WORKERS))
    check_output(out, options.get("overwrite", False))
    source_kind(data)
    return embed_dataset(resolve_model(model_source, cache_dir, project_dir), data, out, **options)


def resolve_model(source: str, cache_dir: Path, project_dir: Path = Path(".")) -> EmbeddingModel:
    """An ONNX file as is, or a ``models:/`` URI resolved once and that version downloaded into ``cache_dir``.

    Pinned to the version: an alias that moves while the job runs cannot give it two models.

    Raises:
        EmbedError: for a missing file. tasks.model_uris.RegistryError: for a URI the registry cannot resolve.
    """
    if source.startswith(MODELS_PREFIX):
        from tasks.model_uris import download_onnx, resolve_version

        version = resolve_version(source, project_dir)
        pinned = f"{MODELS_PREFIX}{version.name}/{version.version}"
        path = download_onnx(pinned, cache_dir / version.name / str(version.version), project_dir)
        return EmbeddingModel(path, source, str(version.version))
    if not Path(source).is_file():
        raise EmbedError(f"--model {source}: no such file; give an ONNX file or models:/<name>@<alias>.")
    return EmbeddingModel(Path(source), source)


def embed_dataset(
    model: EmbeddingModel,
    data: Path,
    out: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    overwrite: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    row_group_rows: int = ROW_GROUP_ROWS,
    progress: bool = True,
) -> EmbedReport:
    """Embeds every image of ``data`` into ``out`` (``.parquet``, or ``.npy`` + ``.csv``); writes the report beside it.

    Args:
        batch_size: images per ONNX run.
        workers: threads decoding and preprocessing the next batches while the model runs (0: none).
        overwrite: replace existing output files.
        max_image_pixels: an image of more pixels is skipped before it is decoded (decompression bombs).
        row_group_rows: Parquet rows per row group (rows held before they are written).
        progress: show a progress bar.

    Raises:
        EmbedError: bad options or output (see :func:`check_output`), a file that is no exported ONNX
            model, or no decodable image in ``data`` (the report, listing why, is written anyway).
        tasks.embed.sources.SourceError: a ``data`` that cannot be read.
    """
    check_options(batch_size, workers)
    writer_class = check_output(out, overwrite)
    refused = IngestReport(source=str(data))  # the readers append what they refuse unread
    total, images = open_source(data, refused)
    embedder = load_embedder(model)
    metadata = embedder.metadata
    report = EmbedReport(
        data=str(data),
        source_kind=source_kind(data),
        out=[],
        model=model.source,
        model_version=model.version,
        embedding_dim=metadata.embedding_dim,
        image_size=metadata.image_size,
        batch_size=batch_size,
        workers=workers,
    )
    lineage = {"model": model.source, "model_version": model.version or "", "embedding_normalized": "l2"}
    labels: Counter[str] = Counter()
    started = time.perf_counter()
    writer = writer_class(out, metadata.embedding_dim, lineage, row_group_rows)
    try:
        prepare = batch_preparer(metadata, max_image_pixels)
        with tqdm(total=total, desc="embed", unit="img", mininterval=1.0, disable=not progress) as bar:
            for rows, pixels, skipped in prepared_batches(images, batch_size, workers, prepare):
                if rows:
                    writer.write(rows, embedder.embed_arrays(pixels))
                    labels.update(row.label for row in rows if row.label is not None)
                    report.num_embedded += len(rows)
                report.skipped.extend(skipped)
                bar.update(len(rows) + len(skipped))
        if report.num_embedded == 0:
            skipped = len(report.skipped) + len(refused.refused)
            raise EmbedError(f"--data {data}: no decodable image ({skipped} skipped, reasons in {report_path(out)}).")
        report.out = [str(path) for path in writer.close()]
    except BaseException as error:  # KeyboardInterrupt included: the report says the run did not finish
        report.error = f"{type(error).__name__}: {error}"
        raise
    finally:
        writer.discard()  # removes nothing once closed; after a failure, the unfinished files
        report.skipped[:0] = [{"path": r["member"], "reason": r["reason"]} for r in refused.refused]
        report.num_skipped = len(report.skipped)
        report.labels = dict(sorted(labels.items()))
        report.num_labeled = sum(labels.values())
        report.seconds = round(time.perf_counter() - started, 3)
        report.images_per_second = round(report.num_embedded / max(report.seconds, 1e-9), 1)
        write_report(report, report_path(out))
    if report.skipped:
        logger.warning("%d files skipped: see %s", report.num_skipped, report_path(out))
    return report


def report_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".report.json")


def write_report(report: EmbedReport, path: Path) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(asdict(report), indent=2) + "\n")
    os.replace(partial, path)  # never half a report


def check_options(batch_size: int, workers: int) -> None:
    if batch_size < 1 or workers < 0:
        raise EmbedError(f"--batch-size {batch_size}, --workers {workers}: need a batch size >= 1 and workers >= 0.")


def check_output(out: Path, overwrite: bool) -> type[ParquetEmbeddingWriter] | type[NpyEmbeddingWriter]:
    """The writer for ``out``'s extension, once it is sure not to replace files unasked.

    Raises:
        EmbedError: for an unknown extension, a missing folder, or existing files without ``overwrite``.
    """
    writer = WRITERS.get(out.suffix.lower())
    if writer is None:
        raise EmbedError(
            f"--out {out}: unknown format {out.suffix or '(no extension)'!r}; choose one of {', '.join(WRITERS)}."
        )
    if not out.parent.is_dir():
        raise EmbedError(f"--out {out}: the folder {out.parent} does not exist.")
    existing = [str(path) for path in writer.paths(out) if path.exists()]
    if existing and not overwrite:
        raise EmbedError(f"--out {out}: {', '.join(existing)} exists; pass --overwrite to replace it.")
    return writer


def load_embedder(model: EmbeddingModel) -> OnnxEmbedder:
    """The model's session and metadata.

    Raises:
        EmbedError: for a model without the size and normalization metadata, or a file that is no ONNX model.
    """
    try:
        return OnnxEmbedder(model.onnx_path)
    except ValueError as error:  # no size/normalization metadata: not exported by `sslpipe export`
        raise EmbedError(f"--model {model.source}: {error}") from None
    except Exception as error:  # noqa: BLE001 - onnx and onnxruntime raise their own types for a file that is no model
        raise EmbedError(f"--model {model.source}: not a loadable ONNX model ({type(error).__name__}).") from None


PreparedBatch = tuple[list[SourceImage], np.ndarray | None, list[dict[str, str]]]


def batch_preparer(metadata: OnnxMetadata, max_image_pixels: int) -> Callable[[list[SourceImage]], PreparedBatch]:
    """A function: images -> (the decodable ones without their bytes, their (n, 3, S, S) pixels, the skipped).

    The decoding and :func:`ssl_core.onnx_embedder.preprocess` are the server's, image for image.
    """

    def prepare(chunk: list[SourceImage]) -> PreparedBatch:
        rows, arrays, skipped = [], [], []
        for image in chunk:
            try:
                arrays.append(preprocess(decode_image(image.data, max_image_pixels), metadata))  # (3, S, S)
            except UndecodableImageError as error:
                skipped.append({"path": image.path, "reason": str(error)})
                continue
            rows.append(SourceImage(image.path, image.label, image.split, b""))
        return rows, np.stack(arrays) if arrays else None, skipped

    return prepare


def prepared_batches(
    images: Iterable[SourceImage], batch_size: int, workers: int, prepare: Callable[[list[SourceImage]], PreparedBatch]
) -> Iterator[PreparedBatch]:
    """``prepare`` of each chunk of ``batch_size`` images, in order; with workers, up to ``workers`` chunks ahead."""
    iterator = iter(images)
    chunks = iter(lambda: list(islice(iterator, batch_size)), [])
    if workers == 0:
        yield from map(prepare, chunks)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="embed-decode") as pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare, chunk))
            if len(pending) > workers:  # bounded: never more than `workers` batches wait for the model
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
