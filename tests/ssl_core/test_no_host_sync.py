"""No op inside a training step would make the host wait for a GPU: checked on the CPU, for every method.

A GPU runs a step's kernels while the host queues the next ones; an op whose result
the host must see (a value read with ``.item()``, an output whose size depends on
values, as ``masked_select``'s or a boolean mask's, a tensor made from host data and
copied over) stalls that pipeline. On the CPU nothing waits, but the ops are the same:
:class:`HostWaits` records them while the engine trains on the device path (the views
rendered by :class:`~ssl_core.batch_augment.BatchViews`), as on a GPU, from the end
of the first step to the end of the last. ``tests/ssl_core/test_cuda.py`` checks the
same on a real GPU with CUDA's sync debug mode, which also sees copies this cannot.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssl_core.augment import Normalization
from ssl_core.device_data import DeviceImages
from ssl_core.engine import StepInfo, TrainConfig, train
from ssl_core.methods import METHOD_NAMES
from ssl_core.methods.base import SSLMethod
from tests.ssl_core.test_every_method_trains import build

aten = torch.ops.aten
IMAGES, BATCH = 48, 16  # 3 steps: the second and third are watched

# What each op makes a GPU's host wait for.
WAITS = {
    aten._local_scalar_dense.default: "a value read on the host (.item(), float(), bool())",
    aten.nonzero.default: "nonzero's output size depends on the values",
    aten.masked_select.default: "masked_select's output size depends on the mask",
    aten.repeat_interleave.Tensor: "the output size depends on the repeats' values",
    aten._unique2.default: "unique's output size depends on the values",
    aten.lift_fresh.default: "a tensor made from host data, copied to the GPU",
}


class HostWaits(TorchDispatchMode):
    """Records, while armed, every op that would make the host wait for a GPU, with the line that called it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.armed:
            why = WAITS.get(func)
            if func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
                why = "indexing with a boolean mask: the output size depends on the mask"
            if why is not None:
                self.seen.append(f"{func} ({why}) at {project_caller()}")
        return func(*args, **(kwargs or {}))


def project_caller() -> str:
    """The innermost frame of this project's code (ssl_core, tasks) in the current stack."""
    for frame in reversed(traceback.extract_stack()):
        if "/ssl_core/" in frame.filename and "/tests/" not in frame.filename:
            return f"{frame.filename.split('/ssl_core/')[-1]}:{frame.lineno} {frame.line}"
    return "(no project frame)"


def device_path_images(method: SSLMethod, count: int = IMAGES) -> DeviceImages:
    """``count`` random 32 px images (on the CPU) with the method's own device-side views (DINO's multi-crop too)."""
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return DeviceImages(
        images, torch.full((count,), -1), method.batch_transform(method.view_config(32), Normalization())
    )


def device_path_config(method: SSLMethod, device: str, epochs: int = 1) -> TrainConfig:
    """The engine as it trains on a GPU: bf16 autocast, channels_last, SGD or LARS (the method's own)."""
    return TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        lr=0.05,
        optimizer=method.chosen_optimizer("auto"),  # LARS for Barlow Twins and VICReg
        seed=3,
        device=device,
        precision="bf16-mixed",
        checkpoint_interval_s=0.0,  # a checkpoint after every epoch, as test_cuda's resume test needs
    )


def inside_the_watched_steps(info: StepInfo) -> bool:
    """From the end of the first step to the end of the last: the epoch's end reads the mean loss on purpose."""
    return info.step_in_epoch < info.steps_per_epoch - 1


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_op_of_a_training_step_would_make_a_gpu_wait(name: str, tmp_path: Path) -> None:
    method = build(name)
    watch = HostWaits()

    def arm(info: StepInfo) -> None:
        watch.armed = inside_the_watched_steps(info)

    with watch:
        history = train(method, device_path_images(method), device_path_config(method, "cpu"), tmp_path, on_step=arm)
    assert len(history.epochs) == 1
    assert not watch.seen, "\n".join(sorted(set(watch.seen)))


def test_the_watch_sees_what_would_wait() -> None:
    """The ops the test above must not find, each seen once."""
    x = torch.randn(4, 4)
    watch = HostWaits()
    with watch:
        watch.armed = True
        x.sum().item()
        x.masked_select(x > 0)
        _ = x[x > 0]
        torch.tensor([1.0, 2.0])
        x.flatten()[:-1].view(3, 5)[:, 1:].flatten()  # off_diagonal's reshaping: nothing to see
        watch.armed = False
        x.sum().item()
    assert len(watch.seen) == 4
    assert "masked_select" in watch.seen[1] and "boolean mask" in watch.seen[2] and "host data" in watch.seen[3]
