"""A 2-D map of the embeddings for the curation report: PCA, then t-SNE.

van der Maaten and Hinton, "Visualizing Data using t-SNE", JMLR 9 (2008),
https://www.jmlr.org/papers/v9/vandermaaten08a.html. scikit-learn's Barnes-Hut
t-SNE (van der Maaten, JMLR 15, 2014) runs on at most ``max_points`` images;
scikit-learn is imported inside :func:`embedding_map`, so importing this module
costs nothing.

The map is computed on one thread: BLAS and OpenMP worker threads spin-wait when
another process holds a core, which can make t-SNE many times slower on a shared
machine, and one thread also gives the same map on every machine.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

PCA_DIMS = 50  # t-SNE's paper reduces to 50 dims first: faster neighbours, less noise
PERPLEXITY = 30.0  # the paper's and scikit-learn's default; lowered for tiny inputs
MAX_ITER = 1000  # scikit-learn's default: max_points, not fewer iterations, bounds the cost


def embedding_map(
    embeddings: np.ndarray,
    max_points: int = 3000,
    seed: int = 0,
    always_include: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of a subsample of the embeddings, for a scatter plot.

    Letters: n = images, d = embedding dim, m = points on the map.

    Subsamples to ``max_points`` (keeping ``always_include``, such as flagged
    images), projects to at most 50 dims with PCA, then runs t-SNE with PCA
    initialization. The same inputs and seed give the same map.

    Args:
        embeddings: (n, d) float32, L2-normalized rows.
        max_points: the most points on the map; t-SNE time grows with it.
        seed: seeds the subsample and t-SNE.
        always_include: indices into ``embeddings`` that are on the map whatever
            the subsample; past ``max_points`` of them, the first ``max_points``
            are kept (pass the worst first).

    Returns:
        ``(indices, xy)``: (m,) int64 indices into ``embeddings``, ascending, and
        their (m, 2) float32 coordinates.

    Raises:
        ValueError: if embeddings is not 2-D, max_points < 1, or an index of
            always_include is out of range.

    Example:
        >>> indices, xy = embedding_map(embeddings, always_include=np.array(flagged))
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {embeddings.shape}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    indices = _subsample(embeddings.shape[0], max_points, seed, always_include)
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    with threadpool_limits(limits=1):  # see the module docstring
        return indices, _tsne(embeddings[indices].astype(np.float64), seed)


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    """(m, 2) float32 t-SNE coordinates of the (m, d) rows of x, after PCA to at most PCA_DIMS."""
    m = x.shape[0]
    if m == 0:
        return np.zeros((0, 2), dtype=np.float32)
    x = _pca(x, PCA_DIMS)  # (m, min(50, d, m))
    # Fewer than 4 distinct points (e.g. every image blank) leave t-SNE nothing to place:
    # scikit-learn's Barnes-Hut code crashes the process on them instead of raising.
    if m < 4 or x.shape[1] < 2 or len(np.unique(x.round(6), axis=0)) < 4:
        # t-SNE needs a few points and 2 dims to place; a plain projection says as much.
        k = min(2, x.shape[1])
        xy = np.zeros((m, 2), dtype=np.float32)
        xy[:, :k] = x[:, :k]
        return xy

    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=min(PERPLEXITY, (m - 1) / 3),  # perplexity ~ neighbours per point; must be < m
        max_iter=MAX_ITER,
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    return tsne.fit_transform(x).astype(np.float32)  # (m, 2)


def _subsample(n: int, max_points: int, seed: int, always_include: np.ndarray | None) -> np.ndarray:
    """Up to max_points ascending indices of range(n): always_include first, the rest drawn at random."""
    keep = np.unique(np.asarray(always_include if always_include is not None else [], dtype=np.int64))
    if keep.size and (keep.min() < 0 or keep.max() >= n):
        raise ValueError(f"always_include must index the {n} embeddings, got values in [{keep.min()}, {keep.max()}]")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    if keep.size > max_points:
        logger.warning("%d images to always include on the map, keeping the first %d", keep.size, max_points)
        # The caller's order (worst first) decides, not the index order np.unique gave.
        ordered = np.asarray(always_include, dtype=np.int64)
        _, first = np.unique(ordered, return_index=True)
        return np.sort(ordered[np.sort(first)][:max_points])
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), keep)
    drawn = rng.choice(rest, size=max_points - keep.size, replace=False)
    return np.sort(np.concatenate([keep, drawn]))


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Projection of the centred rows of x on their top principal axes, signs fixed for determinism."""
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)  # u: (m, r), s: (r,)
    k = min(dims, s.size)
    u = u[:, :k]
    # An SVD axis is defined up to sign: make each one's largest coordinate positive.
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(k)])
    signs[signs == 0] = 1
    return u * signs * s[:k]
