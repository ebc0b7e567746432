"""The pretraining loop: SGD or LARS with a cosine schedule, checkpoints between epochs, resume.

One plain function, :func:`train`, owns the optimizer, schedule and checkpoints;
the method (``SSLMethod``) owns the networks and the loss. Resuming is exact on
CPU: every epoch reseeds the global RNG and the data order from ``(seed, epoch)``,
so an interrupted run continued with ``resume=True`` ends with the same weights as
an uninterrupted one.

Two ways to feed it: a Dataset whose transform draws each view with PIL on the host
(the DataLoader path), or :class:`~ssl_core.device_data.DeviceImages`, decoded once
and augmented a batch at a time on the device (the GPU's fast path).

Several GPUs: launch one process per GPU with torchrun, and have each call this same
function after setting up its process group::

    torchrun --nproc_per_node=4 <the pipeline's entry point> ...

    # in each process, before train():
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group("nccl", device_id=torch.device("cuda", local_rank))

The engine only uses a group it finds initialized (and with more than one process):
the method is wrapped in DistributedDataParallel, which averages the gradients; each
rank trains on its own share of every epoch, ``batch_size`` images per step (the
global batch is ``batch_size * world_size``); the losses take their batch statistics
and negatives over all ranks (:mod:`ssl_core.distributed`); rank 0 writes the
checkpoints into the ``checkpoint_dir`` every rank reads (a shared file system when
the ranks span machines). Without a group, or with one process, nothing of this runs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ssl_core.device_data import DeviceImages
from ssl_core.distributed import (
    all_reduce_mean_,
    average_running_stats_,
    barrier,
    data_parallel,
    is_distributed,
    process_device,
    rank,
    rank_seed,
    world_size,
)
from ssl_core.methods.base import SSLMethod
from ssl_core.optimizers import build_optimizer, scaled_step
from ssl_core.precision import autocast, cudnn_autotuning, loss_scaler, seed_everything
from ssl_core.schedules import cosine_schedule

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
# A per-dimension std of L2-normalized embeddings far below 1/sqrt(dim) means all
# images map to (nearly) the same point; SimSiam (https://arxiv.org/abs/2011.10566,
# sec. 4.1) watches the same statistic.
COLLAPSE_FRACTION = 0.1
# The parts of a step, each a torch.profiler range ("ssl:<phase>"), so that a profile of a run
# (benchmarks/kernel_profile.py) says how much device time each took; "views" is rendered by DeviceImages.
STEP_PHASES = ("views", "forward", "backward", "optimizer", "after_step", "stats")
# What TrainConfig.compile hands to torch.compile: nothing, each of the method's networks on its own
# (SSLMethod.compile_networks), or its whole step, networks, heads and loss as one graph (SSLMethod.compile_step).
COMPILE_SCOPES = ("off", "networks", "step")
# torch.compile's modes; "reduce-overhead" replays CUDA graphs, one launch for a whole compiled graph.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings.

    Attributes:
        epochs: passes over the dataset.
        batch_size: images per step *per process* (per GPU): the global batch is
            ``batch_size * world_size`` (drop_last; reduced to a process's share of the
            dataset if larger).
        lr: peak learning rate (already scaled by the caller for the global batch).
        momentum, weight_decay: SGD settings.
        optimizer: ``sgd``, or ``lars`` (SGD with layer-wise trust ratios, :mod:`ssl_core.optimizers`),
            which Barlow Twins and VICReg need at the recipe's learning rate.
        warmup_epochs: linear warm-up before the cosine decay.
        seed: seeds weights, data order and augmentations.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32``, ``bf16-mixed``, or ``fp16-mixed`` (with dynamic loss scaling,
            :func:`~ssl_core.precision.loss_scaler`; for GPUs with fp16 tensor cores but no bf16 ones).
        num_workers: DataLoader worker processes.
        channels_last: NHWC memory layout for convolutions (measured +13% training
            throughput for the CIFAR ResNet-18 with bf16 on a 2-core CPU; the usual
            advice for mixed precision on GPUs too).
        compile: what ``torch.compile`` compiles (:data:`COMPILE_SCOPES`): ``off``; ``networks``, the
            method's networks each on its own (the backbone, and the momentum or teacher network beside
            it: :attr:`~ssl_core.methods.base.SSLMethod.compiled_networks`); or ``step``, the method's
            whole training step as one graph (:meth:`~ssl_core.methods.base.SSLMethod.compile_step`: the
            heads and the loss too, and every forward of a momentum method, whose eager step
            dispatches about twice SimCLR's operators). Either also compiles the views of a
            :class:`DeviceImages` set (:meth:`ssl_core.batch_augment.BatchViews.compile`). Slow to
            start, pays on long runs.
        compile_mode: ``torch.compile``'s mode for the method (:data:`COMPILE_MODES`; None: its default);
            ``reduce-overhead`` replays CUDA graphs.
        sync_batchnorm: on several GPUs, BatchNorm statistics over the global batch
            (``SyncBatchNorm``) rather than each GPU's; one all-reduce per BN layer and
            forward. Ignored on a single process; CUDA only.
        checkpoint_interval_s: the least time between two checkpoints. An epoch ends with one
            when this long has passed since the last (or since training started), and the last
            epoch always does; 0 writes one after every epoch. A crash loses at most this much
            training. Epochs on a CPU take minutes, so each still ends with a checkpoint; on an
            H200 a CIFAR-10 epoch takes 1.5 s and a ResNet-18 SimCLR checkpoint 0.15 s
            (``benchmarks/step_profile.py``), a tenth of the run if written every epoch.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    channels_last: bool = True
    compile: str = "off"
    compile_mode: str | None = None
    sync_batchnorm: bool = False
    checkpoint_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_SCOPES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_SCOPES)}; got {self.compile!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be None or one of {', '.join(COMPILE_MODES)}; got {self.compile_mode!r}"
            )
        if self.checkpoint_interval_s < 0:
            raise ValueError(f"checkpoint_interval_s must be >= 0, got {self.checkpoint_interval_s}")


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
    loss_tensor: torch.Tensor
    lr: float

    @property
    def loss(self) -> float:
        """The step's loss; reading it waits for the GPU, so callbacks read it only when they use it."""
        return self.loss_tensor.item()


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

    Writes ``checkpoint_dir/last.pt`` after the last epoch, and after every epoch that ends
    ``config.checkpoint_interval_s`` or more after the previous checkpoint. With ``resume=True``
    and an existing checkpoint of the same ``fingerprint`` (a hash of everything that
    shapes the run: data, method, config), training continues after its last
    checkpointed epoch; a checkpoint of another fingerprint is ignored, never mixed in.
    ``on_epoch_end`` runs after every epoch, once its checkpoint (if due) is written (per-epoch
    kNN in the benchmarks); the method is in train mode again when it returns.

    On several processes (see the module docstring) every rank calls it alike: the
    callbacks run on every rank, ``on_step`` with the rank's own loss and the epoch
    statistics with the mean over the ranks; only rank 0 writes the checkpoint.

    Raises:
        ValueError: if the dataset is empty, has fewer images than there are
            processes, or if ``sync_batchnorm`` is asked of processes without CUDA.
    """
    if len(dataset) == 0:
        raise ValueError("The training dataset is empty: check the ingest report for quarantined files.")
    device = process_device(config.device)
    world = world_size()
    # Every rank trains on as many images (drop_last), so that all run as many steps.
    images_per_process = len(dataset) // world
    if images_per_process == 0:
        raise ValueError(f"{len(dataset)} training images cannot be shared among {world} processes.")
    if config.sync_batchnorm and is_distributed() and device.type != "cuda":
        raise ValueError(
            f"sync_batchnorm needs CUDA devices (SyncBatchNorm does not run on {device.type}); set it false."
        )
    batch_size = min(config.batch_size, images_per_process)
    if batch_size < config.batch_size:
        logger.warning(
            "Dataset has %d images (%d per process), fewer than batch_size=%d; using %d.",
            len(dataset),
            images_per_process,
            config.batch_size,
            batch_size,
        )
    steps_per_epoch = images_per_process // batch_size
    lr_schedule = cosine_schedule(config.lr, config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch)

    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    method.to(device, memory_format=memory_format)
    if config.sync_batchnorm and is_distributed():
        # In place: BatchNorm children become SyncBatchNorm around the same tensors; the state dict keeps its keys.
        nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if config.compile != "off":
        # In place: the state dict keeps its keys, so checkpoints resume across compiled and eager runs.
        if config.compile == "step":
            method.compile_step(config.compile_mode)
        else:
            method.compile_networks(config.compile_mode)
        if isinstance(dataset, DeviceImages) and dataset.views is not None:
            dataset.views.compile()
    optimizer = build_optimizer(
        config.optimizer,
        method.trainable_parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        # One kernel for all parameters on a GPU; the CPU keeps the default (bit-exact with older checkpoints).
        # Fused SGD needs a gradient for every parameter on every step.
        fused=(device.type == "cuda" and not method.skips_gradients) or None,
    )
    # fp16-mixed scales the loss. Fused SGD skips an overflowing step on the device; an unfused optimizer (DINO's
    # on a GPU) makes the scaler read on the host whether the gradients overflowed, one sync a step.
    scaler = loss_scaler(device, config.precision)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    history = TrainHistory()
    start_epoch = 0
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            start_epoch, history = _restore(state, method, optimizer, scaler)
            history.resumed_from_epoch = start_epoch
            logger.info("Resuming from %s after epoch %d.", checkpoint_path, start_epoch)
            if state.get("world_size", 1) != world:
                logger.warning(
                    "%s was written by a run of %d processes, resumed on %d: the data order and the global batch "
                    "change, so the weights will differ from those of an uninterrupted run.",
                    checkpoint_path,
                    state.get("world_size", 1),
                    world,
                )
        else:
            logger.info("Ignoring %s: it belongs to a run with other data or settings.", checkpoint_path)
    model = data_parallel(method, device)
    last_checkpoint = time.monotonic()

    with cudnn_autotuning(device):
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            epoch_seed = config.seed * 1_000_003 + epoch
            # Each rank augments with a stream of its own; rank 0, like a single process, with epoch_seed's.
            generator = seed_everything(rank_seed(epoch_seed))
            loader = _epoch_batches(dataset, batch_size, config, epoch, epoch_seed, generator, device)
            model.train()
            loss_sum = torch.zeros((), device=device)
            std_sum = torch.zeros((), device=device)
            for step, (views, _labels) in enumerate(loader):
                global_step = epoch * steps_per_epoch + step
                lr = lr_schedule[global_step]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                views = [v.to(device, memory_format=memory_format, non_blocking=True) for v in views]
                method.before_step(global_step, len(lr_schedule))
                with record_function("ssl:forward"), autocast(device, config.precision):
                    output = model(views)  # through DDP on several processes: its backward averages the gradients
                optimizer.zero_grad(set_to_none=True)
                with record_function("ssl:backward"):
                    scaler.scale(output.loss).backward()
                with record_function("ssl:optimizer"):
                    scaled_step(optimizer, scaler, method.gradient_clip_norm)
                with record_function("ssl:after_step"):
                    method.after_optimizer_step()
                with record_function("ssl:stats"):
                    loss_sum += output.loss.detach()
                    std_sum += F.normalize(output.features.float(), dim=1).std(dim=0).mean()
                if on_step is not None:
                    on_step(StepInfo(epoch, step, steps_per_epoch, output.loss.detach(), lr))
            # The means over all ranks: every rank logs, records and decides (a non-finite loss) alike.
            all_reduce_mean_(loss_sum)
            all_reduce_mean_(std_sum)
            mean_loss = (loss_sum / steps_per_epoch).item()
            _check_numerics(mean_loss, scaler, epoch, config.precision)
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
                "epoch %d/%d loss %.4f std %.4f (%.0fs)",
                epoch + 1,
                config.epochs,
                mean_loss,
                embedding_std,
                stats.seconds,
            )
            if stats.collapsed:
                logger.warning("Embeddings collapsed in epoch %d (std %.2e).", epoch + 1, embedding_std)
            # Each rank's BatchNorm layers tracked its own batches: the checkpoint gets their mean, and every
            # rank goes on from it, as a resumed run would.
            average_running_stats_(method)
            due = epoch + 1 == config.epochs or time.monotonic() - last_checkpoint >= config.checkpoint_interval_s
            if rank() == 0 and due:  # rank 0's clock decides: only it writes
                save_checkpoint(checkpoint_path, epoch + 1, method, optimizer, history, config, fingerprint, scaler)
                last_checkpoint = time.monotonic()
            barrier(device)  # no rank goes on, or returns, before a checkpoint is complete
            if on_epoch_end is not None:
                on_epoch_end(stats)
    return history


def _check_numerics(mean_loss: float, scaler: torch.amp.GradScaler, epoch: int, precision: str) -> None:
    """Raises FloatingPointError where an epoch's training went wrong numerically: a loss that is not
    finite, or, under fp16-mixed, a loss scale that fell below 1.

    The scale halves at every step whose gradients overflow fp16; below 1 they overflow even
    unscaled, so the scaler skips step after step and the weights stop moving, while the loss (in
    fp32) still looks finite.
    """
    fp16_hint = " or set precision to fp32 (fp16's range is narrow)" if precision == "fp16-mixed" else ""
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"Loss became {mean_loss} in epoch {epoch + 1}; lower the learning rate{fp16_hint}.")
    if scaler.is_enabled() and (scale := scaler.get_scale()) < 1.0:
        raise FloatingPointError(
            f"fp16-mixed: the loss scale fell to {scale:.3g} in epoch {epoch + 1}: the gradients overflow fp16 even "
            f"unscaled, so the optimizer skips its steps; lower the learning rate{fp16_hint}."
        )


def _epoch_batches(
    dataset: Dataset | DeviceImages,
    batch_size: int,
    config: TrainConfig,
    epoch: int,
    epoch_seed: int,
    generator: torch.Generator,
    device: torch.device,
) -> Iterable[tuple[list[torch.Tensor], torch.Tensor | None]]:
    """This process's (views, labels) batches of one epoch; labels are None for DeviceImages.

    On several processes every rank shuffles the dataset alike, from the epoch's seed,
    and takes every ``world_size``-th image of the order (DistributedSampler's shards).
    """
    if isinstance(dataset, DeviceImages):
        order = torch.Generator(device=device).manual_seed(epoch_seed)  # the same on every rank
        # Rank 0 draws its views on from the order's stream, as a single process does; the others from their own.
        views = None if rank() == 0 else torch.Generator(device=device).manual_seed(rank_seed(epoch_seed))
        batches = dataset.batches(batch_size, order, device, shard=(rank(), world_size()), views_generator=views)
        return ((views, None) for views in batches)
    sampler = None
    if is_distributed():
        sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)  # the order of (seed, epoch), the same on every rank
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        num_workers=config.num_workers,
        generator=generator,  # the workers' seeds: the rank's own stream
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )


def save_checkpoint(
    path: Path,
    epoch: int,
    method: SSLMethod,
    optimizer: torch.optim.Optimizer,
    history: TrainHistory,
    config: TrainConfig,
    fingerprint: str,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """What :func:`train` writes to ``path`` after every epoch (``benchmarks/step_profile.py`` times it);
    ``scaler``: fp16-mixed's loss scale, which a resumed run must go on from."""
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "world_size": world_size(),  # a resume on another number of processes is not exact
        "method": method.checkpoint_state(),
        "optimizer": optimizer.state_dict(),
        "history": history.to_dict(),
        "train_config": asdict(config),
    }
    if scaler is not None and scaler.is_enabled():
        state["loss_scaler"] = scaler.state_dict()
    # Write then rename: an interrupted save never leaves a corrupt last.pt behind.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore(
    state: dict, method: SSLMethod, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> tuple[int, TrainHistory]:
    method.load_checkpoint_state(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    if "loss_scaler" in state:  # only an fp16-mixed run writes one; a disabled scaler ignores it
        scaler.load_state_dict(state["loss_scaler"])
    history = TrainHistory(
        epochs=[EpochStats(**e) for e in state["history"]["epochs"]],
        resumed_from_epoch=state["history"]["resumed_from_epoch"],
    )
    return int(state["epoch"]), history
