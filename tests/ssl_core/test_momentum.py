"""The EMA target update (ssl_core/momentum.py) against the per-tensor formula of MoCo and BYOL."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_core.momentum import ema_update, frozen_copy
from tests.ssl_core.tiny import tiny_backbone


def moved_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` after ``module`` took a random step, so that the two differ."""
    target = frozen_copy(module)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    return target


def per_tensor_update(online: nn.Module, target: nn.Module, momentum: float) -> list[torch.Tensor]:
    """The target's next parameters computed one tensor at a time, as the MoCo and BYOL reference code does."""
    pairs = zip(target.parameters(), online.parameters(), strict=True)
    return [t.clone().mul_(momentum).add_(o, alpha=1.0 - momentum) for t, o in pairs]


@pytest.mark.parametrize("momentum", [0.99, 0.996, 0.5])
def test_ema_update_is_the_per_tensor_update_bit_for_bit(momentum: float) -> None:
    torch.manual_seed(0)
    online = tiny_backbone(16)
    target = moved_copy(online)
    expected = per_tensor_update(online, target, momentum)
    buffers = [b.clone() for b in target.buffers()]
    ema_update(online, target, momentum)
    for new, want in zip(target.parameters(), expected, strict=True):
        assert torch.equal(new, want)
        assert not new.requires_grad
    for new, old in zip(target.buffers(), buffers, strict=True):
        assert torch.equal(new, old)  # BatchNorm statistics are the target's own


def test_ema_update_refuses_networks_of_other_shapes() -> None:
    with pytest.raises(ValueError, match="parameter tensors"):
        ema_update(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), 0.9)
