"""One pass over the images: pixel hash, quality scores, alignment rendition and pixel embedding, one decode each.

Decoding dominates the cost of all three, so each image is decoded once, in
``num_workers`` processes. An image that no longer decodes (ingest checked it, but
the folder may have changed since) is reported, not fatal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_core.curation.alignment import SIDE, alignment_rendition
from ssl_core.curation.embedders import pixel_embedding
from ssl_core.curation.quality import PIXEL_ISSUES, pixel_quality_scores


def pixel_digest(rgb: np.ndarray) -> str:
    """SHA-256 of an (H, W, 3) uint8 image's shape and pixels: equal exactly when the decoded pixels are.

    The file's bytes, format and metadata do not enter it; an alpha channel is dropped
    first, as the pipeline trains on RGB.
    """
    digest = hashlib.sha256(f"{rgb.shape[1]}x{rgb.shape[0]}:".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


@dataclass
class ScanResult:
    """Per image, in the order of the paths scanned."""

    digests: list[str]
    scores: dict[str, np.ndarray]  # {pixel issue: (N,) float32}, see ssl_core.curation.quality
    renditions: np.ndarray  # (N, 32, 32) uint8, see ssl_core.curation.alignment
    file_bytes: np.ndarray  # (N,) int64: of two copies of a shot, the larger file was compressed less
    pixel_embeddings: np.ndarray | None  # (N, D) float32, when asked for
    unreadable: dict[int, str]  # index -> error; their digest is "" and scores 0


_Scanned = tuple[str, tuple[float, ...], np.ndarray, np.ndarray | None, int, str]


def _scan_one(job: tuple[Path, bool]) -> _Scanned:
    path, with_embedding = job
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        blank = np.zeros((SIDE, SIDE), dtype=np.uint8)
        return "", (0.0,) * len(PIXEL_ISSUES), blank, None, 0, f"{type(error).__name__}: {error}"
    array = np.asarray(rgb)
    scores = pixel_quality_scores(array)
    embedding = pixel_embedding(rgb) if with_embedding else None
    rendition = alignment_rendition(rgb)
    scored = tuple(scores[i] for i in PIXEL_ISSUES)
    return pixel_digest(array), scored, rendition, embedding, path.stat().st_size, ""


def scan_images(
    root: Path,
    paths: Sequence[str],
    with_pixel_embeddings: bool,
    num_workers: int = 2,
    on_image: Callable[[int], None] | None = None,
) -> ScanResult:
    """Decodes every image under ``root`` once: pixel digest, quality scores, and optionally the pixel embedding.

    Args:
        paths: relative to ``root`` (manifest paths).
        num_workers: processes; 0 or 1 scans in this process.
        on_image: called with 1 after each image (progress bars).
    """
    jobs = [(Path(root) / path, with_pixel_embeddings) for path in paths]
    if num_workers > 1 and len(jobs) > 256:
        # fork: the workers inherit the imported modules instead of re-importing them.
        with get_context("fork").Pool(num_workers) as pool:
            results = list(_tick(pool.imap(_scan_one, jobs, chunksize=64), on_image))
    else:
        results = list(_tick(map(_scan_one, jobs), on_image))
    digests = [digest for digest, *_ in results]
    score_rows = np.array([scores for _, scores, *_ in results], dtype=np.float32).reshape(len(jobs), len(PIXEL_ISSUES))
    unreadable = {i: error for i, (*_, error) in enumerate(results) if error}
    embeddings = None
    if with_pixel_embeddings:
        dim = next((e.shape[0] for *_, e, _, _ in results if e is not None), 0)
        embeddings = np.zeros((len(jobs), dim), dtype=np.float32)
        for i, (*_, embedding, _, _) in enumerate(results):
            if embedding is not None:
                embeddings[i] = embedding
    return ScanResult(
        digests=digests,
        scores={issue: score_rows[:, column] for column, issue in enumerate(PIXEL_ISSUES)},
        renditions=np.stack([rendition for _, _, rendition, *_ in results])
        if results
        else np.zeros((0, SIDE, SIDE), np.uint8),
        file_bytes=np.array([size for *_, size, _ in results], dtype=np.int64),
        pixel_embeddings=embeddings,
        unreadable=unreadable,
    )


def _tick(results, on_image: Callable[[int], None] | None):
    for result in results:
        if on_image is not None:
            on_image(1)
        yield result
