"""The evaluate stage's work: embed once per model, then label-free metrics, kNN and the linear probe.

Both the frozen student and a random-init backbone of the same architecture (the
baseline that shows what pretraining gained) are embedded:

- the train split with the deterministic eval transform: RankMe on (a seeded sample
  of up to ``evaluate.rankme_images`` of) these, and the kNN bank;
- two standard augmented views of ``evaluate.view_pairs`` train images: alignment
  and uniformity (:mod:`ssl_core.label_free`);
- the test split, when its labeled images are the kNN queries.

Labeled images (:mod:`tasks.labeled_split`) give kNN (the lightly-benchmark
protocol, :mod:`ssl_core.knn`) and a linear probe (:mod:`ssl_core.linear_probe`).
When the data folder is the curate stage's (it holds ``report.json``), the test
images it found leaked into training are also scored apart: ``top1_without_leaks``
and ``top5_without_leaks`` are the same kNN over the other queries, from the same
embeddings, so a gain that comes from memorized test images shows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from ssl_core.augment import eval_transform
from ssl_core.backbones import build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.knn import KNNResult, knn_evaluate
from ssl_core.label_free import embed_two_views, label_free_scores, sample_indices, singular_values, standard_views
from ssl_core.linear_probe import linear_probe
from ssl_core.model_file import load_embedding_model
from ssl_core.precision import resolve_device, seed_everything
from tasks.errors import UserError
from tasks.evaluate.plots import plot_evaluation
from tasks.labeled_split import LabeledSplit, choose_labeled
from tasks.layout import CURATION_REPORT, EVALUATION_PLOT, METRICS_FILE, MODEL_FILE
from tasks.params import EvaluateParams
from tasks.precision import section_precision

logger = logging.getLogger(__name__)


class EvaluationError(UserError):
    """The data cannot be evaluated; the message says what to do."""


@dataclass
class Embeddings:
    """One model's embeddings of the evaluation images (L2-normalized, on the CPU)."""

    train: torch.Tensor  # (N, D), eval transform, every train-split image in manifest order
    test: torch.Tensor | None  # (M, D) when the test split's labeled images are queries
    view_a: torch.Tensor  # (P, D) one standard view of each sampled train image
    view_b: torch.Tensor  # (P, D) another view of the same images


def run(
    evaluate: EvaluateParams, train_split: str, test_split: str, data: Path, student_dir: Path, out_dir: Path
) -> dict:
    """Evaluates the student and a random-init twin; writes metrics.json, per_class.json and evaluation.png."""
    device = resolve_device(evaluate.device)
    precision = section_precision("evaluate", evaluate.precision, device)
    backbone, info = load_embedding_model(student_dir / MODEL_FILE)
    transform = eval_transform(info.image_size, info.normalization)
    train = ManifestDataset(data, splits=[train_split], transform=transform)
    test = ManifestDataset(data, splits=[test_split], transform=transform)
    if len(train) < 2:
        raise EvaluationError(
            f"split {train_split!r} has {len(train)} images; evaluation needs at least 2: "
            f"check the ingest report, or set data.train_split to the split that holds the training images."
        )
    labeled = choose_labeled(train.labels, test.labels, evaluate.holdout_fraction, evaluate.seed)
    num_unlabeled = sum(label < 0 for label in train.labels + test.labels)
    if isinstance(labeled, str):
        logger.info("No kNN or linear probe: %s. Label-free metrics only.", labeled)
    else:
        logger.info("%s.", labeled.describe(train_split, test_split, num_unlabeled))
    rankme_rows = sample_indices(len(train), evaluate.rankme_images, evaluate.seed)
    views = Subset(
        ManifestDataset(data, splits=[train_split], transform=standard_views(info.image_size, info.normalization)),
        sample_indices(len(train), evaluate.view_pairs, evaluate.seed),
    )
    seed_everything(evaluate.baseline_seed)
    random_backbone = build_backbone(info.backbone, info.image_size).module
    models = {"student": backbone, "random_init": random_backbone}
    embed_test = not isinstance(labeled, str) and labeled.queries_from_test

    scores: dict[str, dict[str, Any]] = {}
    spectra: dict[str, torch.Tensor] = {}
    knn_results: dict[str, KNNResult] = {}
    probe_weight_decays: dict[str, float] = {}
    leaked = leaked_test_paths(data) if embed_test else None
    # (q,) True for the queries curate found no training copy of.
    clean = None if leaked is None else torch.tensor([test.records[int(r)].path not in leaked for r in labeled.queries])
    total = len(models) * (len(train) + (len(test) if embed_test else 0) + 2 * len(views))
    with tqdm(total=total, desc="embed", unit="img", mininterval=1.0) as bar:
        for name, model in models.items():
            queries = test if embed_test else None
            embedded = _embed(model, train, queries, views, evaluate, device, precision, bar.update)
            sample = embedded.train[rankme_rows]
            free = label_free_scores(sample, embedded.view_a, embedded.view_b)
            spectra[name] = singular_values(sample)
            scores[name] = {"rankme": free.rankme, "alignment": free.alignment, "uniformity": free.uniformity}
            if isinstance(labeled, LabeledSplit):
                knn_results[name], labeled_scores, probe_weight_decays[name] = _labeled_scores(
                    embedded, train.labels, test.labels, labeled, len(train.class_names), evaluate, clean
                )
                scores[name].update(labeled_scores)

    metrics: dict[str, Any] = {
        **scores,
        "gain_rankme": scores["student"]["rankme"] - scores["random_init"]["rankme"],
        "collapsed": _collapsed(student_dir),
        "num_images": len(train),
        "rankme_images": len(rankme_rows),
        "view_pairs": len(views),
        "num_unlabeled": num_unlabeled,
    }
    if isinstance(labeled, str):
        metrics["labels"] = {"skipped": labeled}
    else:
        metrics.update(
            gain_top1=scores["student"]["top1"] - scores["random_init"]["top1"],
            k=evaluate.k,
            num_bank=len(labeled.bank),
            num_queries=len(labeled.queries),
            labels=labeled.to_dict(),
        )
        if evaluate.linear_probe:
            metrics["linear_probe_weight_decay"] = probe_weight_decays
        if clean is not None:
            metrics["num_leaked_queries"] = int((~clean).sum())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    per_class = {name: {"top1": r.top1, "per_class_top1": r.per_class_top1} for name, r in knn_results.items()}
    (out_dir / "per_class.json").write_text(
        json.dumps({"classes": train.class_names if knn_results else [], **per_class}, indent=2) + "\n"
    )
    plot_evaluation(spectra, scores, per_class or None, train.class_names, evaluate.k, out_dir / EVALUATION_PLOT)
    _log(metrics)
    return metrics


def _embed(
    model: torch.nn.Module,
    train: ManifestDataset,
    test: ManifestDataset | None,
    views: Subset,
    evaluate: EvaluateParams,
    device: torch.device,
    precision: str,
    on_batch: Callable[[int], None],
) -> Embeddings:
    """One model's embeddings of the train split, the test split if given, and two views of ``views``, on
    ``device`` in ``precision``."""
    model.to(device)

    def embed(dataset: ManifestDataset) -> torch.Tensor:
        batch_size, workers = evaluate.batch_size, evaluate.num_workers
        return compute_embeddings(model, dataset, batch_size, workers, device, precision, on_batch)[0]

    train_x = embed(train)
    test_x = None if test is None else embed(test)
    view_a, view_b = embed_two_views(
        model, views, evaluate.batch_size, evaluate.num_workers, device, precision, evaluate.seed
    )
    on_batch(2 * len(views))
    return Embeddings(train_x, test_x, view_a, view_b)


def _labeled_scores(
    embedded: Embeddings,
    train_labels: list[int],
    test_labels: list[int],
    labeled: LabeledSplit,
    num_classes: int,
    evaluate: EvaluateParams,
    clean: torch.Tensor | None,
) -> tuple[KNNResult, dict[str, float], float | None]:
    """kNN (and leak-free kNN) and the linear probe of one model on the labeled rows."""
    bank_x, bank_y = embedded.train[labeled.bank], torch.tensor(train_labels)[labeled.bank]
    if labeled.queries_from_test:
        query_x, query_y = embedded.test[labeled.queries], torch.tensor(test_labels)[labeled.queries]
    else:
        query_x, query_y = embedded.train[labeled.queries], torch.tensor(train_labels)[labeled.queries]

    def knn(queries: torch.Tensor, labels: torch.Tensor) -> KNNResult:
        return knn_evaluate(bank_x, bank_y, queries, labels, num_classes, evaluate.k, evaluate.temperature)

    result = knn(query_x, query_y)
    scores = {"top1": result.top1, "top5": result.top5}
    if clean is not None and clean.any():
        without = knn(query_x[clean], query_y[clean])  # no second embedding pass
        scores.update(top1_without_leaks=without.top1, top5_without_leaks=without.top5)
    weight_decay = None
    if evaluate.linear_probe:
        probe = linear_probe(bank_x, bank_y, query_x, query_y, num_classes, seed=evaluate.seed)
        scores.update(linear_top1=probe.top1, linear_top5=probe.top5)
        weight_decay = probe.weight_decay
    return result, scores, weight_decay


def _collapsed(student_dir: Path) -> bool:
    history = json.loads((student_dir / "history.json").read_text())
    return bool(history["epochs"] and history["epochs"][-1]["collapsed"])


def _log(metrics: dict[str, Any]) -> None:
    student, baseline = metrics["student"], metrics["random_init"]
    logger.info(
        "RankMe: student %.1f, random init %.1f; alignment %.3f vs %.3f; uniformity %.3f vs %.3f (lower is better).",
        student["rankme"],
        baseline["rankme"],
        student["alignment"],
        baseline["alignment"],
        student["uniformity"],
        baseline["uniformity"],
    )
    if "top1" not in student:
        return
    logger.info("kNN top-1: student %.4f, random init %.4f", student["top1"], baseline["top1"])
    if "linear_top1" in student:
        logger.info(
            "Linear probe top-1: student %.4f, random init %.4f", student["linear_top1"], baseline["linear_top1"]
        )
    if "top1_without_leaks" in student:
        logger.info(
            "kNN top-1 without the %d leaked test images: student %.4f (%.4f with them), random init %.4f (%.4f)",
            metrics["num_leaked_queries"],
            student["top1_without_leaks"],
            student["top1"],
            baseline["top1_without_leaks"],
            baseline["top1"],
        )
    elif "num_leaked_queries" in metrics:
        logger.warning("Every test query leaked into training (see %s): no leak-free accuracy.", CURATION_REPORT)


def leaked_test_paths(data_dir: Path) -> set[str] | None:
    """Manifest paths of the test images curate found in training, from ``<data_dir>/report.json``.

    Returns:
        None when ``data_dir`` holds no curation report (an ingested folder).

    Raises:
        EvaluationError: if the report is not one the curate stage wrote.
    """
    path = data_dir / CURATION_REPORT
    if not path.is_file():
        return None
    try:
        return {leak["test"] for leak in json.loads(path.read_text())["leakage"]}
    except (ValueError, KeyError, TypeError) as error:
        raise EvaluationError(
            f"{path} is not a curation report ({type(error).__name__}: {error}): rerun `sslpipe curate`, "
            f"or remove the file to evaluate without leak-free accuracy."
        ) from None
