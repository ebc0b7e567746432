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

Several GPUs: with ``processes: N`` the stage (same command) starts N training
processes with torchrun's launcher (:func:`train_on_processes`), each calling
:func:`run` in one process group (DDP; :mod:`ssl_core.distributed`). Each trains
on its share of the images, ``batch_size`` at a step, so the global batch, which
the learning rate scales with, is ``batch_size * N``. Rank 0 alone shows the
progress bar, runs the kNN monitor, tracks the run in MLflow and writes the outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from ssl_core.augment import Normalization, ViewConfig
from ssl_core.backbones import available_backbones, build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.device_data import DeviceImages, fast_path_applies
from ssl_core.distributed import launch, process_device, rank, world_size
from ssl_core.engine import EpochStats, StepInfo, TrainConfig, TrainHistory, train
from ssl_core.knn_monitor import KnnMonitor, labeled_indices, labeled_sample
from ssl_core.manifest import MANIFEST_NAME, sha256_file
from ssl_core.methods.base import SSLMethod
from ssl_core.methods.factory import build_method, method_class
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from ssl_core.precision import resolve_device, seed_everything
from ssl_core.teachers import Teacher, load_dinov2_teacher, load_teacher_file
from tasks.cli import configure_logging
from tasks.errors import UserError
from tasks.layout import MODEL_FILE, TEACHER_SPEC
from tasks.live_tracking import LiveRun, training_run
from tasks.params import DataParams, Params, ParamsError, TrainingParams
from tasks.precision import check_precision, section_precision

logger = logging.getLogger(__name__)


class PretrainError(UserError):
    """Pretraining cannot start with this data or teacher; the message says what to do."""


def main(params: Params, args: argparse.Namespace) -> None:
    train_on_processes(
        params.pretrain,
        "pretrain",
        train_student,
        params.pretrain,
        params.data,
        args.data,
        args.out,
        args.checkpoints,
        args.teacher,
        params.registry.experiment,
    )


def train_student(
    training: TrainingParams,
    data: DataParams,
    ingested: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    teacher_dir: Path,
    experiment: str | None,
) -> PretrainResult:
    """:func:`run` with the teacher that the teacher stage prepared in ``teacher_dir``.

    Every training process loads the teacher itself: a DINOv2 teacher's classes come from
    torch.hub's folder and would not unpickle in a spawned process.
    """
    return run(training, data, ingested, out_dir, checkpoint_dir, load_teacher(teacher_dir), experiment=experiment)


def train_on_processes(
    training: TrainingParams, section: str, train_fn: Callable[..., PretrainResult], /, *args: Any, **kwargs: Any
) -> PretrainResult:
    """``train_fn(*args, **kwargs)`` (:func:`run` or :func:`train_student`) on ``training.processes`` processes.

    One process: here. Several: started by torchrun's launcher (:func:`ssl_core.distributed.launch`),
    each in the process group, on GPU ``LOCAL_RANK`` (NCCL) or on the CPU (gloo). ``train_fn`` and
    its arguments must be picklable. Returns rank 0's result.

    Raises:
        ParamsError: before any work, for a setting this machine cannot train (:func:`check_training`).
        ProcessFailedError: when a training process fails, with its error (the others are stopped).
    """
    check_training(training, section)
    if training.processes == 1:
        return train_fn(*args, **kwargs)
    if resolve_device(training.device).type == "cpu":
        logger.warning(
            "%s.processes = %d on the CPU: gloo processes share its cores and train slower than one process; "
            "this is for testing the several-GPU path.",
            section,
            training.processes,
        )
    logger.info(
        "%s: %d training processes of %d images a step: global batch %d",
        section,
        training.processes,
        training.batch_size,
        training.batch_size * training.processes,
    )
    level = logging.getLogger().level
    return launch(training.processes, training.device, _training_process, level, train_fn, args, kwargs)


def _training_process(
    log_level: int, train_fn: Callable[..., PretrainResult], args: tuple, kwargs: dict[str, Any]
) -> PretrainResult:
    """One of :func:`train_on_processes`' processes. Spawned, it starts without the stage's logging:
    rank 0 logs as the stage does, the others only their warnings and errors."""
    configure_logging(log_level if rank() == 0 else logging.WARNING, process=f"rank {rank()}")
    return train_fn(*args, **kwargs)


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
    """The checks of a training section that need torch (params.yaml loads without it).

    Raises:
        ParamsError: for a backbone torchvision does not have, more processes than this machine
            can train on (:func:`check_processes`), or a precision its device cannot run, naming the key.
    """
    check_precision(section, training.precision, resolve_device(training.device))
    if training.backbone not in available_backbones():
        raise ParamsError(
            f"{section}.backbone = {training.backbone!r}: not a torchvision classification model; use its "
            f"torchvision name (e.g. 'resnet50', 'convnext_tiny', 'vit_b_16') or a ResNet with '_cifar' "
            f"(e.g. 'resnet18_cifar')"
        )
    check_processes(training, section)


def check_processes(training: TrainingParams, section: str) -> None:
    """Several processes need one visible GPU each (CUDA), or the CPU.

    Raises:
        ParamsError: naming the key, the value and what this machine allows.
    """
    processes = training.processes
    if processes == 1:
        return
    device = resolve_device(training.device)
    if device.type == "cuda":
        if device.index is not None:
            raise ParamsError(
                f"{section}.device = {training.device!r} names one GPU, but {section}.processes = {processes} "
                f"trains on {processes}: use 'cuda' or 'auto' (process i takes GPU i)"
            )
        visible = torch.cuda.device_count()
        if processes > visible:
            raise ParamsError(
                f"{section}.processes = {processes}: this machine has {visible} visible GPU(s) "
                f"(CUDA_VISIBLE_DEVICES); use at most {visible}"
            )
    elif device.type != "cpu":
        raise ParamsError(
            f"{section}.processes = {processes}: several processes need CUDA GPUs, or the CPU for testing; "
            f"{section}.device = {training.device!r} is {device.type}"
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
    device = process_device(training.device)  # on several processes, this one's GPU
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

    With ``training.processes`` > 1, every process of the group (:func:`train_on_processes`)
    calls it alike; rank 0 alone reports, monitors, tracks and writes the outputs.

    Args:
        training: the run's settings; ``section`` names them in error messages.
        experiment: the MLflow experiment that tracks the training live (None: not tracked).

    Raises:
        ParamsError: for an unknown backbone.
        PretrainError: without training images, or without the teacher a method needs.
        RuntimeError: if this process is not one of ``training.processes`` (start them with
            :func:`train_on_processes`).
    """
    check_training(training, section)
    if training.processes != world_size():
        raise RuntimeError(
            f"{section}.processes = {training.processes}, but this process is one of {world_size()}: "
            "start the training with tasks.pretrain.train_on_processes"
        )
    # Before the images are read (and on a GPU decoded): an emulated bf16 is warned about first.
    precision = section_precision(section, training.precision, process_device(training.device))
    trained = method_class(training.method)
    if trained.needs_teacher and teacher is None:
        raise PretrainError(f"{section}.method {training.method!r} needs a teacher: run the teacher stage first.")
    seed_everything(training.seed)  # the backbone's initial weights, the same on every process
    dataset = ManifestDataset(ingested, splits=[data.train_split])
    if len(dataset) == 0:
        raise PretrainError(
            f"No images in split {data.train_split!r} of {ingested}: set data.train_split to one of the "
            f"ingested splits (see {ingested / 'ingest_report.json'})."
        )
    backbone = build_backbone(training.backbone, data.image_size)
    method = build_method(training.method, backbone, training.recipe, teacher=teacher, num_images=len(dataset))
    train_data = training_data(dataset, method, view_config(trained, training, data), data, training)
    config = train_config(training, peak_lr(trained, training), trained.chosen_optimizer(training.optimizer), precision)
    resolved = {
        "training": training.model_dump(mode="json"),  # processes included: it is in the fingerprint
        "data": data.model_dump(mode="json"),
        "lr": config.lr,
        "optimizer": config.optimizer,  # training.optimizer resolved for the method
        "compiled": config.compile,  # training.compile resolved for this machine
        "precision": precision,  # training.precision resolved for this machine: in the fingerprint
        "teacher": teacher.description if teacher else None,
        # A teacher retrained in place keeps its description: its weights' digest tells the two apart,
        # so a resumed student never goes on distilling from a teacher that is no longer there.
        # Only with a teacher, so that the checkpoints of runs without one keep their fingerprints.
        **({"teacher_sha256": teacher.weights_sha256} if teacher else {}),
    }
    fingerprint = _fingerprint(resolved, ingested)
    if rank() != 0:  # the others train silently: no bar, no monitor, no MLflow, no files
        history = train(method, train_data, config, checkpoint_dir, resume=training.resume, fingerprint=fingerprint)
        return PretrainResult(out_dir / MODEL_FILE, history)

    monitor = build_knn_monitor(training, data, ingested, dataset, precision)
    knn_by_epoch: dict[int, float] = {}
    steps_by_epoch: dict[int, int] = {}
    run_name = f"{training.method}-{training.backbone}" + ("" if section == "pretrain" else f" ({section})")
    tracking = (
        training_run(experiment, run_name, section, resolved, training.monitor)
        if experiment is not None
        else nullcontext(LiveRun(None, training.monitor.log_every_steps))
    )
    steps_total = config.epochs * steps_per_epoch(len(dataset), training)
    with tracking as live, tqdm(total=steps_total, desc=f"pretrain {training.method}", unit="step") as bar:

        def on_step(info: StepInfo) -> None:
            bar.n = info.epoch * info.steps_per_epoch + info.step_in_epoch + 1
            steps_by_epoch[info.epoch + 1] = info.step_in_epoch + 1
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
    record = history_record(history, knn_by_epoch, steps_by_epoch)
    (out_dir / "history.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    if history.epochs and history.epochs[-1].collapsed:
        logger.warning(
            "The embeddings collapsed (see %s): lower the learning rate or change the method.", out_dir / "history.json"
        )
    return PretrainResult(model_path, history)


def peak_lr(trained: type[SSLMethod], training: TrainingParams) -> float:
    """The method's peak lr (:meth:`SSLMethod.peak_lr`) for the global batch: ``batch_size`` images
    on each of ``processes`` processes make one optimizer step."""
    scale = None if training.scale_lr == "auto" else training.scale_lr
    return trained.peak_lr(training.base_lr, training.batch_size * training.processes, scale)


def train_config(training: TrainingParams, lr: float, optimizer: str, precision: str) -> TrainConfig:
    """The engine's settings: ``training``'s, with the peak ``lr``, and the ``optimizer`` and the ``precision``
    resolved for the method and the machine."""
    return TrainConfig(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        optimizer=optimizer,
        warmup_epochs=training.warmup_epochs,
        seed=training.seed,
        device=training.device,
        precision=precision,
        num_workers=training.num_workers,
        compile=compile_scope(training),
    )


def compile_scope(training: TrainingParams) -> str:
    """``training.compile`` as the engine's scope (``ssl_core.engine.COMPILE_SCOPES``): true is ``networks``,
    false ``off``; ``auto`` is ``networks`` for one process on a CUDA device that can compile, else ``off``."""
    if training.compile is True:
        return "networks"
    if training.compile is False:
        return "off"
    if training.compile != "auto":
        return training.compile
    if training.processes != 1 or resolve_device(training.device).type != "cuda":
        return "off"
    blocker = compile_blocker()
    if blocker is not None:
        logger.warning(
            "compile: auto stays off, since %s; training uncompiled (1.5x slower per epoch on an H200).", blocker
        )
        return "off"
    return "networks"


def compile_blocker() -> str | None:
    """Why ``torch.compile`` cannot build GPU kernels on this machine, or None when it can.

    Inductor writes Triton kernels, and Triton builds each kernel's launcher with the
    system's C compiler: a CUDA machine without one would fail at the first step.
    """
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        return "no C compiler is found (gcc, clang or $CC), which Triton needs to build its kernel launchers"
    return None


def steps_per_epoch(num_images: int, training: TrainingParams) -> int:
    """Optimizer steps of one epoch on each process, as the engine counts them: its share of the
    images (drop_last) in batches of ``batch_size``, or of its share when that is smaller."""
    images_per_process = max(1, num_images // training.processes)
    return images_per_process // min(training.batch_size, images_per_process)


def build_knn_monitor(
    training: TrainingParams, data: DataParams, ingested: Path, train_set: ManifestDataset, precision: str
) -> KnnMonitor | None:
    """The per-epoch kNN monitor on labeled images (None when it is off or nothing has a label), embedding
    in the training's ``precision``.

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
    return KnnMonitor(bank_sample, query_sample, len(train_set.class_names), normalization(data), precision)


def history_record(
    history: TrainHistory, knn_by_epoch: dict[int, float], steps_by_epoch: dict[int, int] | None = None
) -> dict:
    """history.json: the engine's per-epoch stats, with the kNN monitor's top-1 where it was measured
    and the optimizer steps each process ran where they were counted (not in epochs a resume skipped)."""
    record = history.to_dict()
    for epoch in record["epochs"]:
        if epoch["epoch"] in knn_by_epoch:
            epoch["knn_top1_monitor"] = knn_by_epoch[epoch["epoch"]]
        if steps_by_epoch and epoch["epoch"] in steps_by_epoch:
            epoch["steps"] = steps_by_epoch[epoch["epoch"]]
    return record


def _fingerprint(resolved: dict, ingested: Path) -> str:
    # Neither what is monitored nor compiling changes what is trained (compiled kernels round
    # differently, nothing more): a resumed run may monitor differently, or resume uncompiled.
    training = {k: v for k, v in resolved["training"].items() if k not in ("monitor", "compile")}
    kept = {k: v for k, v in resolved.items() if k != "compiled"}
    blob = json.dumps({**kept, "training": training}, sort_keys=True).encode()
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
