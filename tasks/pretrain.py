"""Stage 3, pretrain: self-supervised training of the student (or of a teacher).

Writes ``<out>/model.pt`` (the embedding model), ``history.json`` (per-epoch loss,
embedding spread, collapse flag), ``training.png`` and ``config.json`` (the
resolved configuration). Epoch checkpoints go to a separate folder that survives
an interrupted run, so ``resume: true`` continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ssl_core.augment import MultiView, Normalization, ViewConfig, view_transform
from ssl_core.backbones import build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.engine import StepInfo, TrainConfig, TrainHistory, train
from ssl_core.manifest import MANIFEST_NAME, sha256_file
from ssl_core.methods import SELF_SUPERVISED, Distillation, DistillationConfig, SSLMethod, auto_queue_size
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from ssl_core.multicrop import multicrop_transform
from ssl_core.precision import seed_everything
from ssl_core.teachers import Teacher
from tasks.layout import MODEL_FILE
from tasks.params import DataParams, TrainingParams
from tasks.plots import plot_training_history

logger = logging.getLogger(__name__)


class PretrainError(ValueError):
    """Pretraining cannot start with this data or teacher; the message says what to do."""


@dataclass(frozen=True)
class PretrainResult:
    model_path: Path
    history: TrainHistory


def normalization(data: DataParams) -> Normalization:
    return Normalization(mean=tuple(data.mean), std=tuple(data.std))


def build_method(training: TrainingParams, num_images: int, teacher: Teacher | None,
                 image_size: int | None = None) -> SSLMethod:
    """The SSL method named by ``training.method`` around a fresh backbone for ``image_size`` px images."""
    backbone = build_backbone(training.backbone, image_size)
    if training.method in SELF_SUPERVISED:
        method_class, _ = SELF_SUPERVISED[training.method]
        return method_class(backbone.module, backbone.feature_dim, getattr(training, training.method))
    if training.method == "distillation":
        if teacher is None:
            raise PretrainError("pretrain.method 'distillation' needs a teacher: run the teacher stage first.")
        d = training.distillation
        queue_size = auto_queue_size(num_images) if d.queue_size == "auto" else d.queue_size
        config = DistillationConfig(d.temperature, queue_size, d.mixup, d.gradient_clip_norm)
        return Distillation(backbone.module, backbone.feature_dim, teacher.module, teacher.embedding_dim, queue_size, config)
    raise ValueError(f"Unknown method {training.method!r}")


def run(
    training: TrainingParams,
    data: DataParams,
    ingested: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    teacher: Teacher | None = None,
) -> PretrainResult:
    """Pretrains ``training.backbone`` with ``training.method`` on the train split."""
    augment = training.augment
    view = ViewConfig(
        image_size=data.image_size,
        crop_scale=(augment.crop_min_scale, 1.0),
        jitter_strength=augment.jitter_strength,
        jitter_prob=augment.jitter_prob,
        grayscale_prob=augment.grayscale_prob,
        flip_prob=augment.flip_prob,
        blur_prob=augment.blur_prob,
    )
    seed_everything(training.seed)  # the backbone's initial weights
    dataset = ManifestDataset(ingested, splits=[data.train_split])
    if len(dataset) == 0:
        raise PretrainError(
            f"No images in split {data.train_split!r} of {ingested}: set data.train_split to one of the "
            f"ingested splits (see {ingested / 'ingest_report.json'})."
        )
    method = build_method(training, len(dataset), teacher, data.image_size)
    if training.method == "dino":
        dataset.transform = multicrop_transform(training.multicrop, normalization(data))
    else:
        dataset.transform = MultiView([view_transform(view, normalization(data))] * method.num_views)
    config = TrainConfig(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        warmup_epochs=training.warmup_epochs,
        seed=training.seed,
        device=training.device,
        precision=training.precision,
        num_workers=training.num_workers,
    )
    resolved = {"training": training.model_dump(mode="json"), "data": data.model_dump(mode="json"),
                "lr": training.lr, "teacher": teacher.description if teacher else None}
    fingerprint = _fingerprint(resolved, ingested)

    steps_total = config.epochs * max(1, len(dataset) // min(config.batch_size, len(dataset)))
    with tqdm(total=steps_total, desc=f"pretrain {training.method}", unit="step") as bar:
        def on_step(info: StepInfo) -> None:
            bar.n = info.epoch * info.steps_per_epoch + info.step_in_epoch + 1
            bar.set_postfix(epoch=info.epoch + 1, loss=f"{info.loss:.3f}", lr=f"{info.lr:.3g}", refresh=False)
            bar.refresh()

        history = train(method, dataset, config, checkpoint_dir, resume=training.resume,
                        fingerprint=fingerprint, on_step=on_step)

    out_dir.mkdir(parents=True, exist_ok=True)
    info = EmbeddingModelInfo(
        backbone=training.backbone,
        feature_dim=method.feature_dim,
        image_size=data.image_size,
        normalization=normalization(data),
        method=training.method,
        config=resolved,
    )
    model_path = out_dir / MODEL_FILE
    save_embedding_model(model_path, method.backbone.cpu(), info)
    (out_dir / "history.json").write_text(json.dumps(history.to_dict(), indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    plot_training_history(history, out_dir / "training.png", title=f"{training.method} / {training.backbone}")
    if history.epochs and history.epochs[-1].collapsed:
        logger.warning("The embeddings collapsed (see %s): lower the learning rate or change the method.", out_dir / "history.json")
    return PretrainResult(model_path, history)


def _fingerprint(resolved: dict, ingested: Path) -> str:
    blob = json.dumps(resolved, sort_keys=True).encode() + sha256_file(ingested / MANIFEST_NAME).encode()
    return hashlib.sha256(blob + torch.__version__.encode()).hexdigest()
