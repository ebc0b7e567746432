"""Device-wide numeric settings that training sets for itself and gives back, and the precision it picks."""

from __future__ import annotations

import logging

import pytest
import torch

from ssl_core import precision
from ssl_core.precision import autocast, cudnn_autotuning, loss_scaler, resolve_precision, unsupported_precision


@pytest.mark.parametrize(
    ("device", "deterministic", "inside"),
    [
        ("cuda", False, True),  # fixed training shapes: cuDNN times its algorithms once per shape
        ("cuda", True, False),  # asked for deterministic algorithms: no timing race between them
        ("cpu", False, False),  # nothing to tune
    ],
)
def test_cudnn_autotuning_is_on_for_cuda_training_and_restored_after(
    device: str, deterministic: bool, inside: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", deterministic)
    with cudnn_autotuning(torch.device(device)):
        assert torch.backends.cudnn.benchmark is inside
    assert torch.backends.cudnn.benchmark is False


def test_cudnn_autotuning_keeps_a_users_own_setting() -> None:
    previous = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        with cudnn_autotuning(torch.device("cpu")):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = previous


def fake_gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> torch.device:
    """A CUDA device object whose capability and name are ``name``'s: nothing here touches a GPU."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return torch.device("cuda")


def fake_cpu(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool = False) -> torch.device:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "capability", "auto"),
    [
        ("Tesla P100", (6, 0), "fp32"),
        ("Tesla V100", (7, 0), "fp16-mixed"),
        ("Tesla T4", (7, 5), "fp16-mixed"),
        ("A100", (8, 0), "bf16-mixed"),
        ("H100", (9, 0), "bf16-mixed"),
    ],
)
def test_auto_is_bf16_from_ampere_on_and_fp16_on_volta_and_turing(
    name: str, capability: tuple[int, int], auto: str, monkeypatch
) -> None:
    """Tensor cores: fp16 from Volta (7.0) on, bf16 from Ampere (8.0) on; a P100 has neither."""
    gpu = fake_gpu(monkeypatch, name, capability)
    assert resolve_precision("auto", gpu) == auto
    assert resolve_precision("fp32", gpu) == "fp32"
    assert resolve_precision("fp16-mixed", gpu) == "fp16-mixed"


def test_fp16_is_refused_off_cuda_naming_what_to_use() -> None:
    with pytest.raises(ValueError, match=r"precision='fp16-mixed': fp16-mixed is for CUDA GPUs, not cpu: use 'auto'"):
        resolve_precision("fp16-mixed", torch.device("cpu"))


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16-mixed", torch.bfloat16), ("fp16-mixed", torch.float16)]
)
def test_autocast_computes_a_matrix_product_in_the_precisions_type(precision: str, dtype: torch.dtype) -> None:
    a = torch.randn(4, 4)
    with autocast("cpu", precision):
        assert (a @ a).dtype == dtype


def test_only_fp16_scales_the_loss() -> None:
    cpu = torch.device("cpu")
    assert [loss_scaler(cpu, p).is_enabled() for p in ("fp32", "bf16-mixed", "fp16-mixed")] == [False, False, True]


def test_bf16_on_a_gpu_without_bf16_convolutions_is_refused_naming_the_gpu(monkeypatch) -> None:
    gpu = fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    with pytest.raises(ValueError, match=r"compute capability 8\.0 or newer; Tesla T4 has 7\.5.*'auto' or 'fp32'"):
        resolve_precision("bf16-mixed", gpu)
    assert resolve_precision("bf16-mixed", fake_gpu(monkeypatch, "L4", (8, 9))) == "bf16-mixed"


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "auto"), [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "fp32")]
)
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16_instructions(
    avx512_bf16: bool, amx: bool, auto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_precision("auto", fake_cpu(monkeypatch, avx512_bf16, amx)) == auto


def test_explicit_bf16_on_a_cpu_that_emulates_it_runs_with_one_warning(monkeypatch, caplog) -> None:
    cpu = fake_cpu(monkeypatch, avx512_bf16=False)
    monkeypatch.setattr(precision, "_warned_emulated_bf16", set())
    with caplog.at_level(logging.WARNING, logger="ssl_core.precision"):
        assert resolve_precision("bf16-mixed", cpu) == "bf16-mixed"
        assert resolve_precision("bf16-mixed", cpu) == "bf16-mixed"
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "'auto' picks fp32" in warnings[0]


def test_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'fp16'.*'auto', 'fp32', 'bf16-mixed'"):
        resolve_precision("fp16", torch.device("cpu"))
    assert unsupported_precision("auto", torch.device("cpu")) is None
