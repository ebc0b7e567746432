"""Stage 4, evaluate: kNN accuracy of the frozen student vs. a random-init backbone.

The lightly-benchmark protocol (:mod:`ssl_core.knn`): L2-normalized embeddings,
train split as the bank, test split as queries, k=200, temperature 0.1. The same
kNN on a randomly initialized backbone of the same architecture shows how much
pretraining gained. Writes ``metrics.json`` (DVC metrics), ``per_class.json`` and
``knn.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from ssl_core.augment import eval_transform
from ssl_core.backbones import build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.knn import KNNResult, knn_evaluate
from ssl_core.model_file import load_embedding_model
from ssl_core.precision import resolve_device, seed_everything
from tasks.layout import MODEL_FILE
from tasks.params import DataParams, EvaluateParams
from tasks.plots import plot_knn

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """The data cannot be evaluated with kNN; the message says what to do."""


def run(evaluate: EvaluateParams, data: DataParams, ingested: Path, student_dir: Path, out_dir: Path) -> dict:
    backbone, info = load_embedding_model(student_dir / MODEL_FILE)
    transform = eval_transform(info.image_size, info.normalization)
    bank = ManifestDataset(ingested, splits=[data.train_split], transform=transform)
    queries = ManifestDataset(ingested, splits=[data.test_split], transform=transform)
    for role, split, dataset in (("bank", data.train_split, bank), ("queries", data.test_split, queries)):
        if not dataset.is_fully_labeled:
            raise EvaluationError(
                f"kNN evaluation needs labels, but split {split!r} ({role}) has "
                f"{'no images' if len(dataset) == 0 else 'unlabeled images'}: ingest a folder with class "
                f"subfolders, or set data.{'train' if role == 'bank' else 'test'}_split to a labeled split."
            )
    seed_everything(evaluate.baseline_seed)
    random_backbone = build_backbone(info.backbone, info.image_size).module

    results = {"student": _knn(backbone, bank, queries, evaluate), "random_init": _knn(random_backbone, bank, queries, evaluate)}
    history = json.loads((student_dir / "history.json").read_text())
    metrics = {
        "student": {"top1": results["student"].top1, "top5": results["student"].top5},
        "random_init": {"top1": results["random_init"].top1, "top5": results["random_init"].top5},
        "gain_top1": results["student"].top1 - results["random_init"].top1,
        "collapsed": bool(history["epochs"] and history["epochs"][-1]["collapsed"]),
        "k": evaluate.k,
        "num_bank": len(bank),
        "num_queries": len(queries),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    per_class = {name: {"top1": r.top1, "per_class_top1": r.per_class_top1} for name, r in results.items()}
    (out_dir / "per_class.json").write_text(json.dumps({"classes": bank.class_names, **per_class}, indent=2) + "\n")
    plot_knn(per_class, bank.class_names, out_dir / "knn.png", evaluate.k)
    logger.info("kNN top-1: student %.4f, random init %.4f", metrics["student"]["top1"], metrics["random_init"]["top1"])
    return metrics


def _knn(backbone: torch.nn.Module, bank: ManifestDataset, queries: ManifestDataset, evaluate: EvaluateParams) -> KNNResult:
    device = resolve_device(evaluate.device)
    backbone.to(device)
    embeddings = []
    with tqdm(total=len(bank) + len(queries), desc="embed", unit="img", mininterval=1.0) as bar:
        for dataset in (bank, queries):
            embeddings.append(compute_embeddings(backbone, dataset, evaluate.batch_size, evaluate.num_workers,
                                                 device, evaluate.precision, on_batch=bar.update))
    (bank_x, bank_y), (query_x, query_y) = embeddings
    return knn_evaluate(bank_x, bank_y, query_x, query_y, len(bank.class_names), evaluate.k, evaluate.temperature)
