"""What only a CUDA GPU can check: skipped on a machine without one, so CI skips it.

On a lent GPU machine ``benchmarks/gpu_session.sh`` runs these (``pytest -m cuda``)
with the time left after its benchmark; ``benchmarks/README.md`` says how.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_core.augment import Normalization
from ssl_core.device_data import DeviceImages
from ssl_core.engine import StepInfo, TrainConfig, train
from ssl_core.methods import METHOD_NAMES
from ssl_core.methods.base import SSLMethod
from ssl_core.momentum import ema_update, frozen_copy
from ssl_core.optimizers import build_optimizer
from tests.ssl_core.test_every_method_trains import build
from tests.ssl_core.tiny import tiny_backbone

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
IMAGES, BATCH = 96, 16  # 6 steps an epoch


def gpu_images(method: SSLMethod, pinned: bool = False) -> DeviceImages:
    """Random 32 px images on the GPU (or in pinned host memory, as a set too big for it) with the method's
    own device-side views (DINO's multi-crop included)."""
    images = torch.randint(0, 256, (IMAGES, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = method.batch_transform(method.view_config(32), Normalization())
    if pinned:
        return DeviceImages(images.pin_memory(), torch.full((IMAGES,), -1), views)
    return DeviceImages(images, torch.full((IMAGES,), -1), views).place(CUDA)


def gpu_config(method: SSLMethod, epochs: int = 1) -> TrainConfig:
    """The engine as it trains on a GPU: bf16 autocast, channels_last, fused SGD or LARS (the method's own)."""
    return TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        lr=0.05,
        optimizer=method.chosen_optimizer("auto"),
        seed=3,
        device="cuda",
        precision="bf16-mixed",
    )


@pytest.mark.parametrize(
    ("name", "pinned"),
    [pytest.param(name, False, id=name) for name in METHOD_NAMES] + [pytest.param("simclr", True, id="simclr-pinned")],
)
def test_training_steps_never_make_the_host_wait_for_the_gpu(name: str, pinned: bool, tmp_path: Path) -> None:
    """No op from the end of the first step to the end of the last may synchronize with the GPU.

    CUDA's sync debug mode raises on each such op (reading a value, a size that depends on
    values as ``masked_select`` has, a blocking copy between host and GPU): the rendering of
    the views, the method's step, the optimizer and the EMA update all run inside that window,
    and with ``pinned`` images the copy of each batch from pinned host memory too.
    """
    method = build(name)
    steps = IMAGES // BATCH

    def watch(info: StepInfo) -> None:
        # The epoch's end reads the mean loss on purpose: the window closes with the last step.
        torch.cuda.set_sync_debug_mode("error" if info.step_in_epoch < steps - 1 else "default")

    try:
        history = train(method, gpu_images(method, pinned), gpu_config(method), tmp_path, on_step=watch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(history.epochs) == 1


def test_a_gpu_run_crashed_and_resumed_ends_with_the_uninterrupted_runs_weights(tmp_path: Path) -> None:
    """The checkpoint and the per-epoch seeds restore a GPU run as they do a CPU one (tests/ssl_core/test_engine.py)."""
    uninterrupted = build("simclr")
    train(uninterrupted, gpu_images(uninterrupted), gpu_config(uninterrupted, epochs=2), tmp_path / "a")

    class Crash(Exception):
        pass

    def crash_in_the_second_epoch(info: StepInfo) -> None:
        if info.epoch == 1 and info.step_in_epoch == 2:
            raise Crash

    crashed = build("simclr")
    with pytest.raises(Crash):
        train(
            crashed,
            gpu_images(crashed),
            gpu_config(crashed, epochs=2),
            tmp_path / "b",
            on_step=crash_in_the_second_epoch,
        )
    resumed = build("simclr")
    history = train(resumed, gpu_images(resumed), gpu_config(resumed, epochs=2), tmp_path / "b", resume=True)
    assert history.resumed_from_epoch == 1
    expected = uninterrupted.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key


def lars_trajectory(device: torch.device) -> list[torch.Tensor]:
    """Three LARS steps on a weight, a bias and a conv kernel, from fixed gradients; fused SGD underneath on CUDA."""
    generator = torch.Generator().manual_seed(0)
    shapes = ((8, 4), (8,), (3, 3, 2, 2))
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(device)) for shape in shapes]
    fused = device.type == "cuda" or None
    optimizer = build_optimizer("lars", params, lr=0.5, momentum=0.9, weight_decay=5e-4, fused=fused)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(device)
        optimizer.step()
    return [p.detach().cpu() for p in params]


def test_lars_steps_on_the_gpu_as_on_the_cpu() -> None:
    for on_gpu, on_cpu in zip(lars_trajectory(CUDA), lars_trajectory(CPU), strict=True):
        torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-5, atol=1e-6)


def test_ema_update_on_the_gpu_is_the_per_tensor_update() -> None:
    torch.manual_seed(0)
    online = tiny_backbone(16).to(CUDA)
    target = frozen_copy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    pairs = zip(target.parameters(), online.parameters(), strict=True)
    expected = [t.clone().mul_(0.996).add_(o, alpha=0.004) for t, o in pairs]
    ema_update(online, target, 0.996)
    for new, want in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(new, want, rtol=1e-6, atol=1e-7)
