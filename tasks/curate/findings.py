"""What curation finds in a dataset, and which images it drops for it.

:func:`find_problems` runs every check of the report over one scan and one set
of embeddings; :func:`choose_drops` turns the findings into the images the
curated manifest leaves out, by the reasons ``curate.drop`` lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ssl_core.curation.alignment import aligned_similarity
from ssl_core.curation.duplicates import (
    Leak,
    NearDuplicateGroup,
    exact_duplicate_groups,
    find_leaks,
    near_duplicate_groups,
)
from ssl_core.curation.neighbors import SearchSettings, build_index, pairs_above, search
from ssl_core.curation.outliers import flag_outliers, outlier_scores
from ssl_core.curation.quality import flag_issues, odd_size_scores
from ssl_core.curation.scan import ScanResult
from ssl_core.curation.settings import QUALITY_ISSUES
from ssl_core.manifest import ManifestRecord
from tasks.params import CurateParams


@dataclass
class Findings:
    """Every check's result, as indices into the manifest's records."""

    exact_groups: list[list[int]]
    near_groups: list[NearDuplicateGroup]
    leaks: list[Leak]
    scores: dict[str, np.ndarray]  # {quality issue: (N,) score}
    priority: np.ndarray  # (N,) rank as the copy to keep, see keep_priority
    flagged: dict[str, np.ndarray]  # {quality issue: indices, worst first}
    outlier_scores: np.ndarray
    outliers: np.ndarray
    unreadable: dict[int, str] = field(default_factory=dict)


def find_problems(
    records: list[ManifestRecord],
    scan: ScanResult,
    embeddings: np.ndarray,
    params: CurateParams,
    train_split: str,
    test_split: str,
) -> Findings:
    """Duplicates, leaks, quality flags and outliers of ``records`` (the scan and embeddings in their order)."""
    settings = SearchSettings(
        neighbors=max(params.near_duplicates.neighbors, params.outliers.neighbors) + 1,  # +1: itself
        exact_up_to=params.search.exact_up_to,
        nprobe=params.search.nprobe,
    )
    readable = np.array([i not in scan.unreadable for i in range(len(records))])
    similarities, ids = search(build_index(embeddings, settings), embeddings, settings.neighbors)

    # Near duplicates: the embedding proposes, the aligned pixels decide.
    candidates = ids[:, : params.near_duplicates.neighbors + 1]
    first, second, _ = pairs_above(similarities[:, : candidates.shape[1]], candidates, threshold=-np.inf)
    both_readable = readable[first] & readable[second]
    first, second = first[both_readable], second[both_readable]
    with tqdm(total=len(first), desc="align pairs", unit="pair", mininterval=1.0) as bar:
        aligned = aligned_similarity(scan.renditions, first, second, on_batch=bar.update)
    similar = aligned >= params.near_duplicates.similarity
    digests = [d or f"unreadable:{i}" for i, d in enumerate(scan.digests)]
    priority = keep_priority(records, scan.file_bytes)
    near_groups = near_duplicate_groups(priority, first[similar], second[similar], aligned[similar], digests)

    leaks = _leaks(records, scan, embeddings, digests, params, settings, train_split, test_split)

    scores = dict(scan.scores)
    scores["odd_size"] = odd_size_scores(
        np.array([r.width for r in records], dtype=np.float64), np.array([r.height for r in records], dtype=np.float64)
    ).astype(np.float32)
    flagged = {issue: indices[readable[indices]] for issue, indices in flag_issues(scores, params.quality).items()}
    outlier = outlier_scores(similarities[:, : params.outliers.neighbors + 1], ids[:, : params.outliers.neighbors + 1])
    outliers = flag_outliers(np.where(readable, outlier, np.median(outlier)), params.outliers.z)
    return Findings(
        exact_groups=[g for g in exact_duplicate_groups(digests) if readable[g[0]]],
        near_groups=near_groups,
        leaks=leaks,
        scores=scores,
        priority=priority,
        flagged=flagged,
        outlier_scores=outlier,
        outliers=outliers,
        unreadable=dict(scan.unreadable),
    )


def _leaks(
    records: list[ManifestRecord],
    scan: ScanResult,
    embeddings: np.ndarray,
    digests: list[str],
    params: CurateParams,
    settings: SearchSettings,
    train_split: str,
    test_split: str,
) -> list[Leak]:
    """Each test image's most similar training image by aligned pixels, among its embedding neighbours."""
    train = np.array([i for i, r in enumerate(records) if r.split == train_split], dtype=np.int64)
    test = np.array([i for i, r in enumerate(records) if r.split == test_split], dtype=np.int64)
    if len(train) == 0 or len(test) == 0:
        return []
    k = params.near_duplicates.neighbors
    _, positions = search(build_index(embeddings[train], settings), embeddings[test], k)
    queries = np.repeat(test, positions.shape[1])
    matches = positions.ravel()
    valid = matches >= 0
    aligned = np.full(len(queries), -1.0, dtype=np.float32)
    aligned[valid] = aligned_similarity(scan.renditions, queries[valid], train[matches[valid]])
    # Identical pixels are a leak whatever the search proposed (a flat image aligns with nothing).
    train_by_digest = {digests[i]: position for position, i in enumerate(train)}
    best_similarity = np.empty(len(test), dtype=np.float32)
    best_position = np.empty(len(test), dtype=np.int64)
    per_test = aligned.reshape(len(test), -1)
    for row, test_index in enumerate(test):
        if digests[test_index] in train_by_digest and test_index not in scan.unreadable:
            best_similarity[row], best_position[row] = 1.0, train_by_digest[digests[test_index]]
        else:
            column = int(np.argmax(per_test[row]))
            best_similarity[row], best_position[row] = per_test[row, column], positions[row, column]
    return find_leaks(train, test, best_similarity, best_position, params.leakage_similarity)


def keep_priority(records: list[ManifestRecord], blurry: np.ndarray) -> np.ndarray:
    """(N,) rank of each image as the one of its duplicates to keep: the largest, then the sharpest, then by path."""
    order = sorted(
        range(len(records)), key=lambda i: (-records[i].width * records[i].height, blurry[i], records[i].path)
    )
    rank = np.empty(len(records), dtype=np.int64)
    rank[order] = np.arange(len(records))
    return rank


def choose_drops(
    records: list[ManifestRecord], findings: Findings, drop: tuple[str, ...], protected_split: str | None = None
) -> dict[int, str]:
    """``{index: reason}`` of the images the curated manifest leaves out.

    Of each duplicate group, one image per split stays: the first by
    :func:`keep_priority`. A leak drops its training image. Images of
    ``protected_split`` (the test split, which every reported accuracy rests on,
    unless ``curate.drop_test_images``) are only flagged, never dropped, but for
    those that no longer decode.
    """
    dropped: dict[int, str] = {i: f"unreadable: {error}" for i, error in findings.unreadable.items()}
    priority = findings.priority

    def mark(index: int, reason: str) -> None:
        if records[index].split != protected_split:
            dropped.setdefault(index, reason)

    def keep_one_per_split(group: list[int], reason: str) -> None:
        by_split: dict[str, list[int]] = {}
        for index in group:
            by_split.setdefault(records[index].split, []).append(index)
        for members in by_split.values():
            kept = min(members, key=lambda i: priority[i])
            for index in members:
                if index != kept:
                    mark(index, f"{reason}: same shot as {records[kept].path}")

    if "exact_duplicates" in drop:
        for group in findings.exact_groups:
            keep_one_per_split(group, "exact_duplicates")
    if "near_duplicates" in drop:
        for group in findings.near_groups:
            keep_one_per_split(group.indices, "near_duplicates")
    if "leakage" in drop:
        for leak in findings.leaks:
            mark(leak.train, f"leakage: test image {records[leak.test].path} (similarity {leak.similarity:.3f})")
    for issue in QUALITY_ISSUES:
        if issue in drop:
            for index in findings.flagged[issue]:
                mark(int(index), f"{issue}: score {findings.scores[issue][index]:.3f}")
    if "outliers" in drop:
        for index in findings.outliers:
            mark(int(index), f"outliers: score {findings.outlier_scores[index]:.3f}")
    return dropped
