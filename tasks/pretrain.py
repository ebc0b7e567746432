"""Stage 3, pretrain: self-supervised training of the student (or of a teacher).

Writes ``<out>/model.pt`` (the embedding model), ``history.json`` (per-epoch loss,
embedding spread, collapse flag, kNN monitor), ``training.png``, ``config.json``
(the resolved configuration) and ``mlflow_run.json`` (the MLflow run that tracked
the training live: :mod:`tasks.live_tracking`). Epoch checkpoints go to a separate
folder that survives an interrupted run, so ``resume: true`` continues where it
stopped.

The method, its views and its learning rate come from
:mod:`ssl_core.methods.factory` and the method class: nothing here depends on
which method trains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from ssl_core.augment import Normalization, ViewConfig
from ssl_core.backbones import available_backbones, build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.device_data import DeviceImages, fast_path_applies
from ssl_core.engine import EpochStats, StepInfo, TrainConfig, TrainHistory, train
from ssl_core.knn_monitor import KnnMonitor, labeled_indices, labeled_sample
from ssl_core.manifest import MANIFEST_NAME, sha256_file
from ssl_core.methods.base import SSLMethod
from ssl_core.methods.factory import build_method, method_class
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from ssl_core.precision import resolve_device, seed_everything
from ssl_core.teachers import Teacher, load_dinov2_teacher, load_teacher_file
from tasks.errors import UserError
from tasks.layout import MODEL_FILE, TEACHER_SPEC
from tasks.live_tracking import LiveRun, training_run
from tasks.params import DataParams, Params, ParamsError, TrainingParams

logger = logging.getLogger(__name__)


class PretrainError(UserError):
    """Pretraining cannot start with this data or teacher; the message says what to do."""


def main(params: Params, args: argparse.Namespace) -> None:
    teacher = load_teacher(args.teacher)
    run(
        params.pretrain,
        params.data,
        args.data,
        args.out,
        args.checkpoints,
        teacher,
        experiment=params.registry.experiment,
    )


def load_teacher(teacher_dir: Path) -> Teacher | None:
    """The teacher prepared by the teacher stage (``tasks.teacher``), or None when the method needs none.

    Raises:
        PretrainError: if a DINOv2 teacher cannot be fetched (no internet).
    """
    spec = json.loads((teacher_dir / TEACHER_SPEC).read_text())
    if spec["kind"] == "none":
        return None
    if spec["kind"] == "dinov2":
        try:
            return load_dinov2_teacher(spec["name"], spec["image_size"])
        except RuntimeError as error:  # no internet: the message says what to use instead
            raise PretrainError(str(error)) from None
    return load_teacher_file(teacher_dir / MODEL_FILE)


def check_training(training: TrainingParams, section: str) -> None:
    """The checks of a training section that need torchvision (params.yaml loads without it).

    Raises:
        ParamsError: for a backbone torchvision does not have, naming the key.
    """
    if training.backbone not in available_backbones():
        raise ParamsError(
            f"{section}.backbone = {training.backbone!r}: not a torchvision classification model; use its "
            f"torchvision name (e.g. 'resnet50', 'convnext_tiny', 'vit_b_16') or a ResNet with '_cifar' "
            f"(e.g. 'resnet18_cifar')"
        )


@dataclass(frozen=True)
class PretrainResult:
    model_path: Path
    history: TrainHistory


def normalization(data: DataParams) -> Normalization:
    return Normalization(mean=tuple(data.mean), std=tuple(data.std))


def view_config(trained: type[SSLMethod], training: TrainingParams, data: DataParams) -> ViewConfig:
    """The random-view settings of ``training.augment``, with the method's own crops where it says ``auto``."""
    augment = training.augment
    settings = augment.model_dump(exclude={"crop_min_scale"})
    if augment.crop_min_scale != "auto":
        settings["crop_scale"] = (augment.crop_min_scale, 1.0)
    return trained.view_config(data.image_size, **settings)


def training_data(
    dataset: ManifestDataset, method: SSLMethod, view: ViewConfig, data: DataParams, training: TrainingParams
) -> ManifestDataset | DeviceImages:
    """What the engine trains on: on a GPU the images decoded once and augmented there a batch at a
    time (:class:`~ssl_core.device_data.DeviceImages`), else ``dataset`` with per-image PIL views."""
    device = resolve_device(training.device)
    if fast_path_applies(len(dataset), data.image_size, device):
        images = DeviceImages.decode(dataset, data.image_size, device, training.num_workers)
        images.views = method.batch_transform(view, normalization(data))
        return images
    dataset.transform = method.train_transform(view, normalization(data))
    return dataset


def run(
    training: TrainingParams,
    data: DataParams,
    ingested: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    teacher: Teacher | None = None,
    section: str = "pretrain",
    experiment: str | None = None,
) -> PretrainResult:
    """Pretrains ``training.backbone`` with ``training.method`` on the train split.

    Args:
        training: the run's settings; ``section`` names them in error messages.
        experiment: the MLflow experiment that tracks the training live (None: not tracked).

    Raises:
        ParamsError: for an unknown backbone.
        PretrainError: without training images, or without the teacher a method needs.
    """
    check_training(training, section)
    trained = method_class(training.method)
    if trained.needs_teacher and teacher is None:
        raise PretrainError(f"{section}.method {training.method!r} needs a teacher: run the teacher stage first.")
    seed_everything(training.seed)  # the backbone's initial weights
    dataset = ManifestDataset(ingested, splits=[data.train_split])
    if len(dataset) == 0:
        raise PretrainError(
            f"No images in split {data.train_split!r} of {ingested}: set data.train_split to one of the "
            f"ingested splits (see {ingested / 'ingest_report.json'})."
        )
    backbone = build_backbone(training.backbone, data.image_size)
    method = build_method(training.method, backbone, training.recipe, teacher=teacher, num_images=len(dataset))
    train_data = training_data(dataset, method, view_config(trained, training, data), data, training)
    lr = trained.peak_lr(
        training.base_lr, training.batch_size, None if training.scale_lr == "auto" else training.scale_lr
    )
    config = TrainConfig(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        warmup_epochs=training.warmup_epochs,
        seed=training.seed,
        device=training.device,
        precision=training.precision,
        num_workers=training.num_workers,
    )
    resolved = {
        "training": training.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "lr": lr,
        "teacher": teacher.description if teacher else None,
    }
    fingerprint = _fingerprint(resolved, ingested)
    monitor = build_knn_monitor(training, data, ingested, dataset)
    knn_by_epoch: dict[int, float] = {}
    run_name = f"{training.method}-{training.backbone}" + ("" if section == "pretrain" else f" ({section})")
    tracking = (
        training_run(experiment, run_name, section, resolved, training.monitor)
        if experiment is not None
        else nullcontext(LiveRun(None, training.monitor.log_every_steps))
    )
    steps_total = config.epochs * max(1, len(dataset) // min(config.batch_size, len(dataset)))
    with tracking as live, tqdm(total=steps_total, desc=f"pretrain {training.method}", unit="step") as bar:

        def on_step(info: StepInfo) -> None:
            bar.n = info.epoch * info.steps_per_epoch + info.step_in_epoch + 1
            if bar.n % training.monitor.log_every_steps == 0:  # reading the loss waits for a GPU: not every step
                bar.set_postfix(epoch=info.epoch + 1, loss=f"{info.loss:.3f}", lr=f"{info.lr:.3g}", refresh=False)
            bar.refresh()
            live.on_step(info)

        def on_epoch_end(stats: EpochStats) -> None:
            if monitor is not None:
                knn_by_epoch[stats.epoch] = monitor(method.backbone)
                bar.set_postfix(epoch=stats.epoch, loss=f"{stats.loss:.3f}", knn=f"{knn_by_epoch[stats.epoch]:.3f}")
            live.on_epoch_end(stats, knn_by_epoch.get(stats.epoch))

        history = train(
            method,
            train_data,
            config,
            checkpoint_dir,
            resume=training.resume,
            fingerprint=fingerprint,
            on_step=on_step,
            on_epoch_end=on_epoch_end,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        figure = training_figure(history, knn_by_epoch, title=f"{training.method} / {training.backbone}")
        figure.savefig(out_dir / "training.png", dpi=110)
        live.log_figure(figure, "training/training.png")
        if live.active:
            live.reference.write(out_dir)

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
    (out_dir / "history.json").write_text(json.dumps(history_record(history, knn_by_epoch), indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    if history.epochs and history.epochs[-1].collapsed:
        logger.warning(
            "The embeddings collapsed (see %s): lower the learning rate or change the method.", out_dir / "history.json"
        )
    return PretrainResult(model_path, history)


def build_knn_monitor(
    training: TrainingParams, data: DataParams, ingested: Path, train_set: ManifestDataset
) -> KnnMonitor | None:
    """The per-epoch kNN monitor on labeled images (None when it is off or nothing has a label).

    Bank: labeled train images. Queries: labeled test images, else other labeled train images.
    """
    settings = training.monitor
    if settings.knn_bank == 0 or settings.knn_queries == 0:
        return None
    train_labels = train_set.labels
    bank = labeled_indices(train_labels, settings.knn_bank, training.seed)
    if not bank:
        logger.info("No labeled training image: no per-epoch kNN monitor.")
        return None
    test_set = ManifestDataset(ingested, splits=[data.test_split])
    queries_from, query_labels = test_set, test_set.labels
    queries = labeled_indices(query_labels, settings.knn_queries, training.seed)
    if not queries:  # the labeled train images the bank left out
        in_bank = set(bank)
        queries_from, query_labels = train_set, [-1 if i in in_bank else y for i, y in enumerate(train_labels)]
        queries = labeled_indices(query_labels, settings.knn_queries, training.seed)
    if not queries:
        logger.info("Every labeled image is in the kNN bank: no per-epoch kNN monitor.")
        return None
    bank_sample = labeled_sample(train_set.load_image, train_labels, bank, data.image_size)
    query_sample = labeled_sample(queries_from.load_image, query_labels, queries, data.image_size)
    return KnnMonitor(bank_sample, query_sample, len(train_set.class_names), normalization(data), training.precision)


def history_record(history: TrainHistory, knn_by_epoch: dict[int, float]) -> dict:
    """history.json: the engine's per-epoch stats, with the kNN monitor's top-1 where it was measured."""
    record = history.to_dict()
    for epoch in record["epochs"]:
        if epoch["epoch"] in knn_by_epoch:
            epoch["knn_top1_monitor"] = knn_by_epoch[epoch["epoch"]]
    return record


def _fingerprint(resolved: dict, ingested: Path) -> str:
    # What is monitored does not change what is trained: a resumed run may monitor differently.
    training = {k: v for k, v in resolved["training"].items() if k != "monitor"}
    blob = json.dumps({**resolved, "training": training}, sort_keys=True).encode()
    blob += sha256_file(ingested / MANIFEST_NAME).encode()
    return hashlib.sha256(blob + torch.__version__.encode()).hexdigest()


def training_figure(history: TrainHistory, knn_by_epoch: dict[int, float], title: str) -> Figure:
    """Loss, embedding spread and (where measured) the kNN monitor per epoch, side by side."""
    epochs = [e.epoch for e in history.epochs]
    fig = Figure(figsize=(13.5 if knn_by_epoch else 9, 3.5))  # no pyplot: no global state, no display needed
    axes = fig.subplots(1, 3 if knn_by_epoch else 2)
    ax_loss, ax_std = axes[0], axes[1]
    ax_loss.plot(epochs, [e.loss for e in history.epochs], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_std.plot(epochs, [e.embedding_std for e in history.epochs], marker="o", color="tab:green")
    ax_std.set(xlabel="epoch", ylabel="per-dim std of normalized features", title="embedding spread (collapse -> 0)")
    ax_std.set_ylim(bottom=0)
    if knn_by_epoch:
        measured = sorted(knn_by_epoch)
        axes[2].plot(measured, [knn_by_epoch[e] for e in measured], marker="o", color="tab:purple")
        axes[2].set(xlabel="epoch", ylabel="top-1", title="kNN monitor (labeled sample)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
