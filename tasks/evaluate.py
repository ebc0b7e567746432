"""Stage 4, evaluate: kNN accuracy of the frozen student vs. a random-init backbone.

The lightly-benchmark protocol (:mod:`ssl_core.knn`): L2-normalized embeddings,
train split as the bank, test split as queries, k=200, temperature 0.1. The same
kNN on a randomly initialized backbone of the same architecture shows how much
pretraining gained. Writes ``metrics.json`` (DVC metrics), ``per_class.json`` and
``knn.png``.

When the data folder is the curate stage's (it holds ``report.json``), the test
images it found leaked into training are scored apart: ``top1_without_leaks`` and
``top5_without_leaks`` are the same kNN over the other queries, from the same
embeddings, so a gain that comes from memorized test images shows.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from ssl_core.augment import eval_transform
from ssl_core.backbones import build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.knn import KNNResult, knn_evaluate
from ssl_core.model_file import load_embedding_model
from ssl_core.precision import resolve_device, seed_everything
from tasks.errors import UserError
from tasks.layout import CURATION_REPORT, METRICS_FILE, MODEL_FILE
from tasks.params import EvaluateParams, Params

logger = logging.getLogger(__name__)


class EvaluationError(UserError):
    """The data cannot be evaluated with kNN; the message says what to do."""


def main(params: Params, args: argparse.Namespace) -> None:
    run(params.evaluate, params.data.train_split, params.data.test_split, args.data, args.model, args.out)


def run(
    evaluate: EvaluateParams, train_split: str, test_split: str, ingested: Path, student_dir: Path, out_dir: Path
) -> dict:
    """kNN of the student and of a random-init twin: ``train_split`` is the bank, ``test_split`` the queries."""
    backbone, info = load_embedding_model(student_dir / MODEL_FILE)
    transform = eval_transform(info.image_size, info.normalization)
    bank = ManifestDataset(ingested, splits=[train_split], transform=transform)
    queries = ManifestDataset(ingested, splits=[test_split], transform=transform)
    for role, split, dataset in (("bank", train_split, bank), ("queries", test_split, queries)):
        if not dataset.is_fully_labeled:
            raise EvaluationError(
                f"kNN evaluation needs labels, but split {split!r} ({role}) has "
                f"{'no images' if len(dataset) == 0 else 'unlabeled images'}: ingest a folder with class "
                f"subfolders, or set data.{'train' if role == 'bank' else 'test'}_split to a labeled split."
            )
    leaked = leaked_test_paths(ingested)
    # (q,) True for the queries curate found no training copy of.
    clean = None if leaked is None else torch.tensor([r.path not in leaked for r in queries.records])
    seed_everything(evaluate.baseline_seed)
    random_backbone = build_backbone(info.backbone, info.image_size).module

    def knn(bank_x: torch.Tensor, bank_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor) -> KNNResult:
        return knn_evaluate(bank_x, bank_y, query_x, query_y, len(bank.class_names), evaluate.k, evaluate.temperature)

    results, scores = {}, {}
    for name, model in (("student", backbone), ("random_init", random_backbone)):
        bank_x, bank_y, query_x, query_y = _embed(model, bank, queries, evaluate)
        results[name] = knn(bank_x, bank_y, query_x, query_y)
        scores[name] = {"top1": results[name].top1, "top5": results[name].top5}
        if clean is not None and clean.any():
            without = knn(bank_x, bank_y, query_x[clean], query_y[clean])  # no second embedding pass
            scores[name].update(top1_without_leaks=without.top1, top5_without_leaks=without.top5)
    history = json.loads((student_dir / "history.json").read_text())
    metrics = {
        **scores,
        "gain_top1": results["student"].top1 - results["random_init"].top1,
        "collapsed": bool(history["epochs"] and history["epochs"][-1]["collapsed"]),
        "k": evaluate.k,
        "num_bank": len(bank),
        "num_queries": len(queries),
    }
    if clean is not None:
        metrics["num_leaked_queries"] = int((~clean).sum())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    per_class = {name: {"top1": r.top1, "per_class_top1": r.per_class_top1} for name, r in results.items()}
    (out_dir / "per_class.json").write_text(json.dumps({"classes": bank.class_names, **per_class}, indent=2) + "\n")
    plot_knn(per_class, bank.class_names, out_dir / "knn.png", evaluate.k)
    logger.info("kNN top-1: student %.4f, random init %.4f", metrics["student"]["top1"], metrics["random_init"]["top1"])
    if "top1_without_leaks" in metrics["student"]:
        logger.info(
            "kNN top-1 without the %d leaked test images: student %.4f (%.4f with them), random init %.4f (%.4f)",
            metrics["num_leaked_queries"],
            metrics["student"]["top1_without_leaks"],
            metrics["student"]["top1"],
            metrics["random_init"]["top1_without_leaks"],
            metrics["random_init"]["top1"],
        )
    elif clean is not None:
        logger.warning("Every test image leaked into training (see %s): no leak-free accuracy.", CURATION_REPORT)
    return metrics


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


def _embed(
    backbone: torch.nn.Module, bank: ManifestDataset, queries: ManifestDataset, evaluate: EvaluateParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings and labels of the bank, then of the queries: ``(bank_x, bank_y, query_x, query_y)``."""
    device = resolve_device(evaluate.device)
    backbone.to(device)
    embeddings = []
    with tqdm(total=len(bank) + len(queries), desc="embed", unit="img", mininterval=1.0) as bar:
        for dataset in (bank, queries):
            embeddings.append(
                compute_embeddings(
                    backbone,
                    dataset,
                    evaluate.batch_size,
                    evaluate.num_workers,
                    device,
                    evaluate.precision,
                    on_batch=bar.update,
                )
            )
    (bank_x, bank_y), (query_x, query_y) = embeddings
    return bank_x, bank_y, query_x, query_y


def plot_knn(results: dict[str, dict], class_names: list[str], path: Path, k: int) -> Path:
    """Per-class kNN top-1 of each model, with the overall accuracy in the legend."""
    fig = Figure(figsize=(max(6.0, 0.7 * len(class_names) + 2), 4))  # no pyplot: no global state
    ax = fig.subplots()
    width = 0.8 / max(1, len(results))
    for i, (name, result) in enumerate(results.items()):
        positions = [c + (i - (len(results) - 1) / 2) * width for c in range(len(class_names))]
        ax.bar(positions, result["per_class_top1"], width, label=f"{name}: top-1 {result['top1']:.3f}")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set(ylabel="kNN top-1", ylim=(0, 1), title=f"kNN accuracy per class (k={k})")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
