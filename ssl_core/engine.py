"""The pretraining loop: SGD with a cosine schedule, per-epoch checkpoints, resume.

One plain function, :func:`train`, owns the optimizer, schedule and checkpoints;
the method (``SSLMethod``) owns the networks and the loss. Resuming is exact on
CPU: every epoch reseeds the global RNG and the data order from ``(seed, epoch)``,
so an interrupted run continued with ``resume=True`` ends with the same weights as
an uninterrupted one.

Two ways to feed it: a Dataset whose transform draws each view with PIL on the host
(the DataLoader path), or :class:`~ssl_core.device_data.DeviceImages`, decoded once
and augmented a batch at a time on the device (the GPU's fast path).

Single GPU or CPU here; multi-GPU scale-out is torchrun + DDP, not this loop.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ssl_core.device_data import DeviceImages
from ssl_core.methods.base import SSLMethod
from ssl_core.precision import autocast, resolve_device, seed_everything
from ssl_core.schedules import cosine_schedule

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
# A per-dimension std of L2-normalized embeddings far below 1/sqrt(dim) means all
# images map to (nearly) the same point; SimSiam (https://arxiv.org/abs/2011.10566,
# sec. 4.1) watches the same statistic.
COLLAPSE_FRACTION = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings.

    Attributes:
        epochs: passes over the dataset.
        batch_size: images per step (drop_last; reduced to the dataset size if larger).
        lr: peak learning rate (already scaled for the batch size by the caller).
        momentum, weight_decay: SGD settings.
        warmup_epochs: linear warm-up before the cosine decay.
        seed: seeds weights, data order and augmentations.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32`` or ``bf16-mixed``.
        num_workers: DataLoader worker processes.
        channels_last: NHWC memory layout for convolutions (measured +13% training
            throughput for the CIFAR ResNet-18 with bf16 on a 2-core CPU; the usual
            advice for mixed precision on GPUs too).
        compile: ``torch.compile`` the backbone (slow to start; pays on long runs).
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    channels_last: bool = True
    compile: bool = False


@dataclass
class EpochStats:
    epoch: int
    loss: float
    lr: float
    embedding_std: float
    collapsed: bool
    seconds: float


@dataclass
class TrainHistory:
    epochs: list[EpochStats] = field(default_factory=list)
    resumed_from_epoch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepInfo:
    """What a progress callback learns after each optimizer step."""

    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    loss: float
    lr: float


def train(
    method: SSLMethod,
    dataset: Dataset | DeviceImages,
    config: TrainConfig,
    checkpoint_dir: Path,
    resume: bool = False,
    fingerprint: str = "",
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
) -> TrainHistory:
    """Pretrains ``method`` on ``dataset``: a Dataset of (list of views, label), or
    :class:`~ssl_core.device_data.DeviceImages` whose views are rendered on the device.

    Writes ``checkpoint_dir/last.pt`` after every epoch. With ``resume=True`` and an
    existing checkpoint of the same ``fingerprint`` (a hash of everything that
    shapes the run: data, method, config), training continues after its last
    finished epoch; a checkpoint of another fingerprint is ignored, never mixed in.
    ``on_epoch_end`` runs after each epoch's checkpoint is written (per-epoch kNN in
    the benchmarks); the method is in train mode again when it returns.

    Raises:
        ValueError: if the dataset is empty.
    """
    if len(dataset) == 0:
        raise ValueError("The training dataset is empty: check the ingest report for quarantined files.")
    device = resolve_device(config.device)
    batch_size = min(config.batch_size, len(dataset))
    if batch_size < config.batch_size:
        logger.warning(
            "Dataset has %d images, fewer than batch_size=%d; using %d.", len(dataset), config.batch_size, batch_size
        )
    steps_per_epoch = len(dataset) // batch_size
    lr_schedule = cosine_schedule(config.lr, config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch)

    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    method.to(device, memory_format=memory_format)
    if config.compile:
        method.backbone.compile()  # in place: the state dict keeps its keys
    optimizer = torch.optim.SGD(
        method.trainable_parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        # One kernel for all parameters on a GPU; the CPU keeps the default (bit-exact with older checkpoints).
        # Fused SGD needs a gradient for every parameter on every step.
        fused=(device.type == "cuda" and not method.skips_gradients) or None,
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    history = TrainHistory()
    start_epoch = 0
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            start_epoch, history = _restore(state, method, optimizer)
            history.resumed_from_epoch = start_epoch
            logger.info("Resuming from %s after epoch %d.", checkpoint_path, start_epoch)
        else:
            logger.info("Ignoring %s: it belongs to a run with other data or settings.", checkpoint_path)

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        epoch_seed = config.seed * 1_000_003 + epoch
        generator = seed_everything(epoch_seed)
        if isinstance(dataset, DeviceImages):
            device_generator = torch.Generator(device=device).manual_seed(epoch_seed)
            loader = ((views, None) for views in dataset.batches(batch_size, device_generator, device))
        else:
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=config.num_workers,
                generator=generator,
                persistent_workers=False,
                pin_memory=device.type == "cuda",
            )
        method.train()
        loss_sum = torch.zeros((), device=device)
        std_sum = torch.zeros((), device=device)
        for step, (views, _labels) in enumerate(loader):
            global_step = epoch * steps_per_epoch + step
            lr = lr_schedule[global_step]
            for group in optimizer.param_groups:
                group["lr"] = lr
            views = [v.to(device, memory_format=memory_format, non_blocking=True) for v in views]
            method.before_step(global_step, len(lr_schedule))
            with autocast(device, config.precision):
                output = method.training_step(views)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            if method.gradient_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(method.trainable_parameters(), method.gradient_clip_norm)
            optimizer.step()
            method.after_optimizer_step()
            loss_sum += output.loss.detach()
            std_sum += F.normalize(output.features.float(), dim=1).std(dim=0).mean()
            if on_step is not None:
                # .item() syncs with the GPU; only pay it when someone listens.
                on_step(StepInfo(epoch, step, steps_per_epoch, output.loss.item(), lr))
        mean_loss = (loss_sum / steps_per_epoch).item()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"Loss became {mean_loss} in epoch {epoch + 1}; lower the learning rate.")
        uniform_std = 1.0 / math.sqrt(output.features.shape[1])
        embedding_std = (std_sum / steps_per_epoch).item()
        stats = EpochStats(
            epoch=epoch + 1,
            loss=mean_loss,
            lr=lr,
            embedding_std=embedding_std,
            collapsed=embedding_std < COLLAPSE_FRACTION * uniform_std,
            seconds=time.perf_counter() - started,
        )
        history.epochs.append(stats)
        logger.info(
            "epoch %d/%d loss %.4f std %.4f (%.0fs)", epoch + 1, config.epochs, mean_loss, embedding_std, stats.seconds
        )
        if stats.collapsed:
            logger.warning("Embeddings collapsed in epoch %d (std %.2e).", epoch + 1, embedding_std)
        _save_checkpoint(checkpoint_path, epoch + 1, method, optimizer, history, config, fingerprint)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    return history


def _save_checkpoint(
    path: Path,
    epoch: int,
    method: SSLMethod,
    optimizer: torch.optim.Optimizer,
    history: TrainHistory,
    config: TrainConfig,
    fingerprint: str,
) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "method": method.checkpoint_state(),
        "optimizer": optimizer.state_dict(),
        "history": history.to_dict(),
        "train_config": asdict(config),
    }
    # Write then rename: an interrupted save never leaves a corrupt last.pt behind.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore(state: dict, method: SSLMethod, optimizer: torch.optim.Optimizer) -> tuple[int, TrainHistory]:
    method.load_checkpoint_state(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    history = TrainHistory(
        epochs=[EpochStats(**e) for e in state["history"]["epochs"]],
        resumed_from_epoch=state["history"]["resumed_from_epoch"],
    )
    return int(state["epoch"]), history
