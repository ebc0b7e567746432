"""Several training processes (torchrun + DDP): who this process is, and the collectives the losses need.

Every helper falls back to the identity when no process group is initialized, or when it
holds a single process, so the losses and the engine call them unconditionally and a
single-process run does exactly the arithmetic it did before. Each collective must be
called by every rank, in the same order: a rank that skips one leaves the others waiting.

Gathering with gradients follows SimCLR's ``tpu_cross_replica_concat`` and lightly's
``GatherLayer``: every rank receives all ranks' rows, and in the backward pass each rank's
rows receive the *sum* of the gradients that all ranks' losses send them. DDP then averages
the parameter gradients over the ranks, so the optimizer sees the gradient of the mean of
the per-rank losses, which is the loss of the global batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl_core.precision import resolve_device

if TYPE_CHECKING:
    from ssl_core.methods.base import SSLMethod

# torch >= 2.13 ships an autograd-aware all-gather among its functional collectives (its backward
# is a reduce-scatter sum) and deprecates torch.distributed.nn.functional.all_gather in its favour;
# older torch has only the latter, which behaves the same.
try:
    from torch.distributed._functional_collectives import all_gather_single as _all_gather_single
except ImportError:  # torch < 2.13
    _all_gather_single = None

# BatchNorm buffers that each rank updates from its own batches (num_batches_tracked stays equal).
RUNNING_STATS = ("running_mean", "running_var")


def is_distributed() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of training processes; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's index in ``[0, world_size())``; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def process_device(name: str) -> torch.device:
    """The device of this process (:func:`~ssl_core.precision.resolve_device`); on several
    processes, plain ``cuda`` (or ``auto``) means the GPU its launcher made current with
    ``torch.cuda.set_device(LOCAL_RANK)``, not GPU 0 for all."""
    device = resolve_device(name)
    if is_distributed() and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def data_parallel(method: SSLMethod, device: torch.device) -> nn.Module:
    """``method`` itself on one process; on several, its DistributedDataParallel wrapper,
    whose backward averages the gradients over the ranks.

    Call the wrapper (its ``forward`` is the method's ``training_step``); keep using
    ``method`` for everything else. Parameters that get no gradient on some steps
    (``method.skips_gradients``) make DDP look for unused parameters after each forward.
    """
    if not is_distributed():
        return method
    # DDP hooks only the parameters that require grad when it is built: a trainable one frozen right now
    # (DINO's last layer early in a run) would otherwise never have its gradient averaged once it thaws.
    frozen = [p for p in method.trainable_parameters() if not p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    model = DistributedDataParallel(
        method,
        device_ids=[device] if device.type == "cuda" else None,
        # Without it DDP would wait forever for the gradient of a parameter that sat a step out.
        find_unused_parameters=method.skips_gradients,
    )
    for parameter in frozen:
        parameter.requires_grad_(False)
    # DDP has just copied rank 0's parameters and buffers to every rank; by default it would broadcast the
    # buffers again before every forward. The memory bank, the center and the queue stay equal through their
    # own collectives and the BatchNorm statistics are averaged before each checkpoint
    # (average_running_stats_), so that traffic (a whole memory bank per step) would buy nothing.
    model.broadcast_buffers = False
    return model


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0, rank 0's rows first; gradients flow back to each rank's rows.

    Args:
        x: (n, ...) with the same shape on every rank.

    Returns:
        (world_size * n, ...); ``x`` itself on a single process.
    """
    if not is_distributed():
        return x
    if _all_gather_single is not None:
        # An AsyncCollectiveTensor: wait() hands back a plain tensor and keeps the autograd graph.
        return _all_gather_single(x.contiguous(), 0, dist.group.WORLD).wait()
    return torch.cat(torch.distributed.nn.functional.all_gather(x))


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` along dim 0, without gradient: MoCo's ``concat_all_gather``, for keys to enqueue."""
    return gather_with_grad(x)


@torch.no_grad()
def all_reduce_mean_(x: torch.Tensor) -> torch.Tensor:
    """Replaces ``x`` in place by its mean over all ranks (for statistics and buffers); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x)
        x.div_(dist.get_world_size())
    return x


def average_running_stats_(module: nn.Module) -> None:
    """Averages the BatchNorm running statistics of ``module`` over all ranks, in place.

    Each rank's BatchNorm layers track the statistics of its own batches; their mean is the
    estimate over all ranks' data (timm's ``distribute_bn(reduce=True)``). SyncBatchNorm's are
    already equal everywhere and stay so.
    """
    if not is_distributed():
        return
    for name, buffer in module.named_buffers():
        if name.endswith(RUNNING_STATS):
            all_reduce_mean_(buffer)


def barrier(device: torch.device) -> None:
    """Waits until every rank gets here; names the GPU so that NCCL does not have to guess it."""
    if not is_distributed():
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def rank_seed(seed: int) -> int:
    """The seed of this rank's own random stream (augmentations), derived from ``seed``.

    Rank 0, and so a single process, keeps ``seed`` itself. Any other rank mixes ``(seed, rank)``
    with NumPy's SeedSequence: ``seed + rank`` would replay, on rank 1, the stream rank 0 draws
    for the next epoch's seed. The result fits NumPy's 32-bit seeds.
    """
    if rank() == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank()]).generate_state(1)[0])
