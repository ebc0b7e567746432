"""Nearest-neighbour search over L2-normalized embeddings, with faiss.

Cosine similarity is the inner product of unit vectors, so every index here uses
faiss's inner-product metric. Up to ``exact_up_to`` vectors the search is exact (a
flat index: every pair compared); above it, an inverted-file index with 8-bit
scalar quantization (IVF-SQ8, Jégou et al. 2011, "Product quantization for nearest
neighbor search") scans only the ``nprobe`` cells nearest each query and stores a
quarter of the float32 bytes, so a million 512-d vectors fit in ~0.5 GB and are
searched in minutes on two cores (``benchmarks/curation_search.py`` measures it).

Vectors are added and searched in chunks, so the caller may pass a read-only
``np.memmap`` and the float32 copies made here stay one chunk large.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SearchSettings:
    """How to search.

    Attributes:
        neighbors: neighbours kept per image (a duplicate group larger than this is
            still found whole: groups are connected components of the pairs).
        exact_up_to: datasets up to this size are searched exactly.
        nprobe: inverted-file cells scanned per query in the approximate index.
        chunk_size: vectors added or searched at once (bounds the float32 copies).
        seed: for the k-means that trains the approximate index.
    """

    neighbors: int = 10
    exact_up_to: int = 100_000
    nprobe: int = 16
    chunk_size: int = 16_384
    seed: int = 0


def import_faiss() -> Any:
    # faiss logs at INFO each CPU build it tries before the one that loads: noise to a user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as error:  # an optional dependency of ssl_core
        raise ImportError("Neighbour search needs faiss: pip install faiss-cpu (or faiss-gpu).") from error
    return faiss


def build_index(embeddings: np.ndarray, settings: SearchSettings = SearchSettings()) -> Any:
    """A faiss inner-product index holding ``embeddings`` (N, D), exact or IVF-SQ8 by size.

    The approximate index has ``4 * sqrt(N)`` cells (faiss's guideline is 4-16 sqrt(N))
    and is trained on 48 vectors per cell (faiss wants at least 39), sampled with
    ``settings.seed``: k-means on more costs minutes and buys little recall.
    """
    faiss = import_faiss()
    num, dim = embeddings.shape
    if num <= settings.exact_up_to:
        index = faiss.IndexFlatIP(dim)
    else:
        cells = int(4 * math.sqrt(num))
        index = faiss.index_factory(dim, f"IVF{cells},SQ8", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(settings.seed)
        sample = np.sort(rng.choice(num, size=min(num, 48 * cells), replace=False))
        index.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
        faiss.extract_index_ivf(index).nprobe = settings.nprobe
    for start in range(0, num, settings.chunk_size):
        index.add(np.ascontiguousarray(embeddings[start : start + settings.chunk_size], dtype=np.float32))
    return index


def search(
    index: Any,
    queries: np.ndarray,
    k: int,
    chunk_size: int = 16_384,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar indexed vectors of each query.

    Returns:
        similarities (Q, k) float32, most similar first, and their index ids (Q, k)
        int64; ids are -1 where the index holds fewer than k vectors.
    """
    k = min(k, index.ntotal)
    similarities = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk_size):
        chunk = np.ascontiguousarray(queries[start : start + chunk_size], dtype=np.float32)
        similarities[start : start + len(chunk)], ids[start : start + len(chunk)] = index.search(chunk, k)
        if on_chunk is not None:
            on_chunk(len(chunk))
    return similarities, ids


def pairs_above(
    similarities: np.ndarray, ids: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique pairs ``(i, j)``, ``i < j``, with similarity >= ``threshold``, from a self-search.

    Args:
        similarities, ids: (N, k) from :func:`search` of the indexed vectors against
            themselves (row i holds image i's neighbours, usually itself first).

    Returns:
        ``(first, second, similarity)`` arrays, one entry per pair.
    """
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    keep = (similarities >= threshold) & (ids >= 0) & (ids != rows)
    first, second = np.minimum(rows[keep], ids[keep]), np.maximum(rows[keep], ids[keep])
    similarity = similarities[keep]
    # A pair found from both ends appears twice: keep one, with the higher score
    # (the quantized index may score the two directions slightly differently).
    order = np.lexsort((-similarity, second, first))
    first, second, similarity = first[order], second[order], similarity[order]
    unique = np.ones(len(first), dtype=bool)
    unique[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    return first[unique], second[unique], similarity[unique]
