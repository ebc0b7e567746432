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

Starting the processes: :func:`launch` runs a function on N local processes with torchrun's
own launcher (``elastic_launch``, what ``torchrun --standalone --nproc_per_node=N`` calls), each
inside the process group :func:`init_from_environment` joins; code started by ``torchrun``
itself calls :func:`init_from_environment` and :func:`close_process_group` around its work.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
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
# What torchrun's launcher handles by stopping its processes (its default TORCHELASTIC_SIGNALS_TO_HANDLE).
LAUNCHER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


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


class ProcessFailedError(RuntimeError):
    """A process started by :func:`launch` failed; the message names it and carries its error."""


def init_from_environment(device_name: str) -> torch.device:
    """Joins the process group that torchrun's launcher describes in the environment (``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and returns this process's device.

    On CUDA (``cuda`` or ``auto`` with a GPU) the process takes GPU ``LOCAL_RANK`` and NCCL; on the
    CPU, gloo (slower than one process: for testing the several-process path).

    Raises:
        ValueError: for a device that names one GPU (``cuda:1``: every process would take it) or is
            neither CUDA nor the CPU.
    """
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"device {device_name!r} names one GPU; on several processes use 'cuda' or 'auto' "
                "(each process takes GPU LOCAL_RANK)"
            )
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        # Naming the GPU binds NCCL's communicator to it now, not on the first collective's guess.
        dist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ValueError(f"device {device_name!r}: several processes need CUDA GPUs or the CPU, not {device.type}")
    return device


def close_process_group() -> None:
    """Leaves the process group :func:`init_from_environment` joined (NCCL warns at exit otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(processes: int, device_name: str, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` on ``processes`` processes of this machine, each in the process group of
    :func:`init_from_environment`; returns rank 0's result.

    The processes are started as ``torchrun --standalone --nproc_per_node=<processes>`` starts them
    (its ``elastic_launch``, a rendezvous on a free local port), by spawning: ``function`` and ``args``
    must be picklable (``function`` defined at module level). When one process fails, the launcher
    stops the others and this raises.

    Raises:
        ProcessFailedError: naming the first process that failed, with its exception (its traceback
            is logged by the launcher).
    """
    # The workers' error files, removed afterwards (the launcher's default folder would stay in /tmp).
    with tempfile.TemporaryDirectory(prefix="torchelastic_") as log_dir, _signal_handlers_kept():
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=processes,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",  # torchrun --standalone: any free port of this machine
            max_restarts=0,  # a failure is reported, not retried: resume reruns from the last checkpoint
            logs_specs=DefaultLogsSpecs(log_dir=log_dir),
        )
        try:
            results = elastic_launch(config, _process_main)(device_name, function, args)
        except ChildFailedError as error:
            failed_rank, failure = error.get_first_failure()
            # The error file's {"message": "Type: text", ...}, or the launcher's note on a process killed by a signal.
            message = failure.message["message"] if isinstance(failure.message, dict) else failure.message
            raise ProcessFailedError(
                f"process {failed_rank} of {processes} failed (exit code {failure.exitcode}): {message}"
            ) from None
    return results[0]


@contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Puts back this process's handlers of the signals that the launcher takes over (to stop its
    processes) and would leave pointing at its own handler."""
    if threading.current_thread() is not threading.main_thread():  # the launcher sets none from other threads
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in LAUNCHER_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(sig, handler)


def _process_main(device_name: str, function: Callable[..., Any], args: tuple) -> Any:
    """What each process of :func:`launch` runs: ``function(*args)`` inside the process group."""
    if "OMP_NUM_THREADS" not in os.environ:
        # torchrun sets OMP_NUM_THREADS=1 for the same reason: the processes share this machine's cores.
        torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["LOCAL_WORLD_SIZE"])))
    init_from_environment(device_name)
    try:
        return function(*args)
    finally:
        close_process_group()
