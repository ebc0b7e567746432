"""What only a CUDA GPU can check: marked ``cuda``, so skipped on a machine without one, as in CI.

On a lent GPU machine ``benchmarks/gpu_session.sh`` runs these (``pytest -m cuda``)
with the time left after its benchmark; ``benchmarks/README.md`` says how.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ssl_core.device_data import DeviceImages
from ssl_core.engine import StepInfo, train
from ssl_core.methods import METHOD_NAMES
from ssl_core.methods.base import SSLMethod
from ssl_core.momentum import ema_update
from ssl_core.optimizers import build_optimizer
from tests.ssl_core.test_every_method_trains import Interrupt, assert_trains_like, build
from tests.ssl_core.test_momentum import moved_copy, per_tensor_update
from tests.ssl_core.test_no_host_sync import device_path_config, device_path_images, inside_the_watched_steps
from tests.ssl_core.test_optimizers import scaled_training, small_network
from tests.ssl_core.tiny import tiny_backbone

pytestmark = pytest.mark.cuda  # skipped without a CUDA GPU (tests/conftest.py)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
IMAGES = 96  # 6 steps of BATCH an epoch


def gpu_images(method: SSLMethod, pinned: bool = False) -> DeviceImages:
    """The device path's images on the GPU, or in pinned host memory as a set too big for it would be."""
    images = device_path_images(method, IMAGES)
    if pinned:
        images.images = images.images.pin_memory()
        return images
    return images.place(CUDA)


@pytest.mark.parametrize(
    ("name", "pinned", "precision"),
    [pytest.param(name, False, "bf16-mixed", id=name) for name in METHOD_NAMES]
    + [pytest.param("simclr", True, "bf16-mixed", id="simclr-pinned")]
    # fp16's loss scaler with fused SGD and fused LARS (DINO's unfused optimizer reads the overflow on the host).
    + [pytest.param(name, False, "fp16-mixed", id=f"{name}-fp16") for name in ("simclr", "barlowtwins")],
)
def test_training_steps_never_make_the_host_wait_for_the_gpu(
    name: str, pinned: bool, precision: str, tmp_path: Path
) -> None:
    """No op from the end of the first step to the end of the last may synchronize with the GPU.

    CUDA's sync debug mode raises on each such op (reading a value, a size that depends on
    values as ``masked_select`` has, a blocking copy between host and GPU): the rendering of
    the views, the method's step, the optimizer and the EMA update all run inside that window,
    and with ``pinned`` images the copy of each batch from pinned host memory too.
    """
    method = build(name)
    config = dataclasses.replace(device_path_config(method, "cuda"), precision=precision)

    def watch(info: StepInfo) -> None:
        torch.cuda.set_sync_debug_mode("error" if inside_the_watched_steps(info) else "default")

    try:
        history = train(method, gpu_images(method, pinned), config, tmp_path, on_step=watch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(history.epochs) == 1
    assert all(p.isfinite().all() for p in method.parameters())


def test_a_gpu_run_crashed_and_resumed_ends_with_the_uninterrupted_runs_weights(tmp_path: Path) -> None:
    """The checkpoint and the per-epoch seeds restore a GPU run as they do a CPU one (tests/ssl_core/test_engine.py)."""
    uninterrupted = build("simclr")
    config = device_path_config(uninterrupted, "cuda", epochs=2)
    train(uninterrupted, gpu_images(uninterrupted), config, tmp_path / "a")

    def crash_in_the_second_epoch(info: StepInfo) -> None:
        if info.epoch == 1 and info.step_in_epoch == 2:
            raise Interrupt

    crashed = build("simclr")
    with pytest.raises(Interrupt):
        train(crashed, gpu_images(crashed), config, tmp_path / "b", on_step=crash_in_the_second_epoch)
    resumed = build("simclr")
    history = train(resumed, gpu_images(resumed), config, tmp_path / "b", resume=True)
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


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_fused_steps_on_the_gpu_skip_an_overflow_as_on_the_cpu(name: str) -> None:
    """The CUDA kernel of fused SGD, under the loss scaler, with the first step overflowing (the usual one)."""
    trajectories = []
    for device in (CUDA, CPU):
        network = small_network().to(device)
        optimizer = build_optimizer(name, network.parameters(), 0.3, 0.9, 5e-4, fused=True)
        scales = scaled_training(network, optimizer, "fp16-mixed", overflow_at=0, device=device)
        trajectories.append(([p.detach().cpu() for p in network.parameters()], scales))
    (on_gpu, gpu_scales), (on_cpu, cpu_scales) = trajectories
    assert gpu_scales == cpu_scales
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


def test_ema_update_on_the_gpu_is_the_per_tensor_update() -> None:
    torch.manual_seed(0)
    online = tiny_backbone(16).to(CUDA)
    target = moved_copy(online)
    expected = per_tensor_update(online, target, 0.996)
    ema_update(online, target, 0.996)
    for new, want in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(new, want, rtol=1e-6, atol=1e-7)


# Last in the file: compiling takes the GPU machine tens of seconds, and a call short of time keeps the tests above.
@pytest.mark.parametrize("name", ["byol", "distillation"])
def test_a_whole_step_replayed_as_cuda_graphs_trains_like_eager(name: str, tmp_path: Path) -> None:
    """``compile="step"`` with ``reduce-overhead``: the step captured once as CUDA graphs and replayed, with the
    parameters the optimizer and the EMA change in place between replays, the BatchNorm statistics and the queue the
    step writes, and distillation's mixup drawn inside the graph. In fp32, the weights of eager's up to rounding."""
    config = dataclasses.replace(device_path_config(build(name), "cuda"), precision="fp32")
    eager = build(name)
    train(eager, gpu_images(eager), config, tmp_path / "eager")
    graphed = build(name)
    graphed_config = dataclasses.replace(config, compile="step", compile_mode="reduce-overhead")
    train(graphed, gpu_images(graphed), graphed_config, tmp_path / "graphed")
    assert_trains_like(graphed, eager, tolerance=5e-3, label=name)
