"""Device-wide numeric settings that training sets for itself and gives back."""

from __future__ import annotations

import pytest
import torch

from ssl_core.precision import cudnn_autotuning


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
