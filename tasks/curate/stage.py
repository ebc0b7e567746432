"""Stage 2, curate: an ingested folder -> a curated one, with report.json and report.html.

    sslpipe curate --data data/ingested --out data/curated

Reads the ingested manifest, decodes each image once (pixel hash, quality scores),
embeds it with ``curate.embedder``, and finds exact and near duplicates, test
images leaked into training, quality problems and outliers
(:mod:`tasks.curate.findings`). Writes to ``--out``:

- ``manifest.csv`` and ``images/``: the images kept, hard-linked from the ingested
  folder (copied where links are impossible), so the folder is a dataset like the
  ingested one and every later stage reads it instead;
- ``report.json``: every finding, what was dropped and why, the selection to label;
- ``report.html``: the same for people, with thumbnails and a 2-D map;
- ``scores.csv``: every image's quality and outlier scores;
- ``ingest_report.json``: the ingested folder's, copied along.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssl_core.curation.embedders import model_embeddings
from ssl_core.curation.embedding_map import embedding_map
from ssl_core.curation.scan import scan_images
from ssl_core.curation.selection import select, subset_metrics
from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, read_manifest, sha256_file, write_manifest
from ssl_core.precision import resolve_device
from tasks.curate.embedder import resolve_embedder
from tasks.curate.findings import Findings, choose_drops, find_problems
from tasks.curate.report_page import write_report_page
from tasks.errors import UserError
from tasks.layout import CURATION_PAGE, CURATION_REPORT, INGEST_REPORT
from tasks.params import CurateParams
from tasks.precision import section_precision

logger = logging.getLogger(__name__)

SCORES_CSV = "scores.csv"


class CurationError(UserError):
    """The data cannot be curated as asked; the message says what to change."""


def run(params: CurateParams, train_split: str, test_split: str, ingested: Path, out_dir: Path) -> dict:
    """Curates ``ingested`` into ``out_dir`` (replaced) and returns the report.

    ``train_split`` is what training reads and selection picks from; test images
    similar to training ones are leaks.
    """
    records = read_manifest(ingested / MANIFEST_NAME)
    _check_request(params, train_split, records, ingested)
    device = resolve_device(params.device)
    precision = section_precision("curate", params.precision, device)  # for a model embedder
    with tempfile.TemporaryDirectory(prefix="curate-") as tmp:
        model_file = resolve_embedder(params.embedder, Path(tmp))
        with tqdm(total=len(records), desc="scan", unit="img", mininterval=1.0) as bar:
            scan = scan_images(
                ingested, [r.path for r in records], model_file is None, params.num_workers, on_image=bar.update
            )
        if model_file is None:
            embeddings = scan.pixel_embeddings
        else:
            with tqdm(total=len(records), desc="embed", unit="img", mininterval=1.0) as bar:
                embeddings = model_embeddings(
                    model_file, ingested, params.batch_size, 0, str(device), precision, on_batch=bar.update
                )
    logger.info("Searching neighbours of %d images", len(records))
    findings = find_problems(records, scan, embeddings, params, train_split, test_split)
    dropped = choose_drops(records, findings, params.drop, None if params.drop_test_images else test_split)
    kept_train = sum(r.split == train_split for i, r in enumerate(records) if i not in dropped)
    if kept_train == 0 or len(dropped) == len(records):
        raise CurationError(
            f"curate.drop = {list(params.drop)} would drop every image of split {train_split!r} in {ingested}: "
            f"nothing would be left to train on. Drop fewer reasons or raise their thresholds."
        )
    kept = [r for i, r in enumerate(records) if i not in dropped]
    report = build_report(records, findings, dropped, embeddings, params, train_split, test_split, scan.digests)

    # Staged beside out_dir: the final rename and the hard links stay on one file system.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would leave the dataset readable by its owner only
    try:
        _write_dataset(ingested, kept, staging)
        (staging / CURATION_REPORT).write_text(json.dumps(report, indent=1) + "\n")
        _write_scores(records, findings, staging / SCORES_CSV)
        shown = _map(records, embeddings, findings, report, params.map_points)
        write_report_page(report, ingested, staging / CURATION_PAGE, embedding_map=shown)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts = report["counts"]
    logger.info(
        "Curated %d -> %d images (%s); report: %s",
        counts["images"],
        counts["kept"],
        ", ".join(f"{n} {reason}" for reason, n in counts["dropped"].items()) or "none dropped",
        out_dir / CURATION_PAGE,
    )
    return report


def _check_request(params: CurateParams, train_split: str, records: list[ManifestRecord], ingested: Path) -> None:
    """The errors a user can fix, before any work."""
    if not records:
        raise CurationError(f"{ingested / MANIFEST_NAME} lists no image: ingest a folder or archive with images first.")
    num_train = sum(r.split == train_split for r in records)
    if params.selection.size > num_train:
        raise CurationError(
            f"curate.selection.size = {params.selection.size} but split {train_split!r} has only {num_train} "
            f"images: pick at most {num_train}, or 0 for no selection."
        )


def build_report(
    records: list[ManifestRecord],
    findings: Findings,
    dropped: dict[int, str],
    embeddings: np.ndarray,
    params: CurateParams,
    train_split: str,
    test_split: str,
    digests: list[str],
) -> dict:
    """report.json: paths as in the ingested manifest, every list worst or most similar first."""
    path = [r.path for r in records]
    reasons = [reason.split(":", 1)[0] for reason in dropped.values()]
    splits: dict[str, int] = {}
    for record in records:
        splits[record.split] = splits.get(record.split, 0) + 1
    leaked_tests = sorted({leak.test for leak in findings.leaks})
    report = {
        "num_images": len(records),
        "splits": splits,
        "embedder": {"spec": params.embedder, "dim": int(embeddings.shape[1])},
        "exact_duplicates": [[path[i] for i in group] for group in findings.exact_groups],
        "near_duplicates": [[path[i] for i in group.indices] for group in findings.near_groups],
        "near_duplicate_similarity": [group.min_similarity for group in findings.near_groups],
        "leakage": [
            {"train": path[leak.train], "test": path[leak.test], "similarity": leak.similarity}
            for leak in findings.leaks
        ],
        "leaked_test_fraction": round(len(leaked_tests) / max(1, splits.get(test_split, 0)), 4),
        "quality": {issue: [path[i] for i in indices] for issue, indices in findings.flagged.items()},
        "quality_scores": {
            issue: {path[i]: round(float(findings.scores[issue][i]), 4) for i in indices}
            for issue, indices in findings.flagged.items()
        },
        "quality_thresholds": {issue: getattr(params.quality, issue) for issue in findings.flagged},
        "outliers": [path[i] for i in findings.outliers],
        "outlier_scores": {path[i]: round(float(findings.outlier_scores[i]), 4) for i in findings.outliers},
        "selection": _selection(records, dropped, embeddings, params, train_split),
        "dropped": {path[i]: reason for i, reason in sorted(dropped.items())},
        "counts": {
            "images": len(records),
            "kept": len(records) - len(dropped),
            "dropped": {reason: reasons.count(reason) for reason in sorted(set(reasons))},
            "exact_duplicate_groups": len(findings.exact_groups),
            "exact_duplicate_images": sum(len(g) for g in findings.exact_groups),
            "near_duplicate_groups": len(findings.near_groups),
            "near_duplicate_images": sum(len(g.indices) for g in findings.near_groups),
            "leaked_test_images": len(leaked_tests),
            "quality": {issue: len(indices) for issue, indices in findings.flagged.items()},
            "outliers": len(findings.outliers),
            "unique_pixels": len(set(digests)),
        },
        "thresholds": params.model_dump(mode="json"),
    }
    return report


def _selection(
    records: list[ManifestRecord], dropped: dict[int, str], embeddings: np.ndarray, params: CurateParams, split: str
) -> dict | None:
    """The images to label among the kept training images, and its metrics next to a random pick of the same size."""
    size = params.selection.size
    if size == 0:
        return None
    pool = np.array([i for i, r in enumerate(records) if r.split == split and i not in dropped], dtype=np.int64)
    if size > len(pool):
        raise CurationError(
            f"curate.selection.size = {size} but only {len(pool)} training images are left after dropping "
            f"{list(params.drop)}: pick at most {len(pool)}."
        )
    candidates = embeddings[pool]
    picked = select(candidates, size, params.selection.strategy, params.selection.seed)
    random = select(candidates, size, "random", params.selection.seed)
    return {
        "strategy": params.selection.strategy,
        "size": size,
        "pool": len(pool),
        "paths": [records[pool[i]].path for i in picked],
        "metrics": {
            "selected": vars(subset_metrics(candidates, picked)),
            "random": vars(subset_metrics(candidates, random)),
        },
    }


def _write_dataset(ingested: Path, kept: list[ManifestRecord], out_dir: Path) -> None:
    """The kept images (hard links where possible: no second copy on disk) and their manifest."""
    for record in kept:
        target = out_dir / record.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(ingested / record.path, target)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(ingested / record.path, target)
    write_manifest(kept, out_dir / MANIFEST_NAME)
    (out_dir / "source_manifest_sha256.txt").write_text(sha256_file(ingested / MANIFEST_NAME) + "\n")
    # What ingest quarantined stays with the data: register logs it, error messages point to it.
    if (ingested / INGEST_REPORT).is_file():
        shutil.copyfile(ingested / INGEST_REPORT, out_dir / INGEST_REPORT)


def _write_scores(records: list[ManifestRecord], findings: Findings, path: Path) -> None:
    issues = list(findings.scores)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "split", *issues, "outlier"])
        for i, record in enumerate(records):
            scores = [f"{findings.scores[issue][i]:.4f}" for issue in issues]
            writer.writerow([record.path, record.split, *scores, f"{findings.outlier_scores[i]:.4f}"])


def _map(
    records: list[ManifestRecord], embeddings: np.ndarray, findings: Findings, report: dict, points: int
) -> tuple[list[str], np.ndarray] | None:
    """The points of the report's 2-D map: a sample, with every dropped, leaked, outlying and selected image in it."""
    if points == 0 or len(embeddings) < 5:
        return None
    index = {record.path: i for i, record in enumerate(records)}
    selected = report["selection"]["paths"] if report["selection"] else []
    leaked = [path for leak in report["leakage"] for path in (leak["train"], leak["test"])]
    shown = {index[path] for path in [*report["dropped"], *leaked, *selected]} | {int(i) for i in findings.outliers}
    indices, xy = embedding_map(embeddings, points, always_include=np.array(sorted(shown), dtype=np.int64))
    return [records[i].path for i in indices], xy
