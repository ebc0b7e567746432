"""Exponential-moving-average (momentum) target networks, shared by MoCo, BYOL and DINO.

The target is a copy of the online network that receives no gradient and follows it
as theta_t <- m * theta_t + (1 - m) * theta_o after every optimizer step (MoCo, He et
al. 2020, https://arxiv.org/abs/1911.05722, eq. 2; BYOL, Grill et al. 2020,
https://arxiv.org/abs/2006.07733, sec. 3.1).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that takes no gradient (and so never enters the optimizer)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters.

    Buffers (BatchNorm statistics) are not averaged: as in the MoCo and BYOL
    reference code, the target keeps its own, updated by its forward passes.

    The multi-tensor (``_foreach``) kernels that torch's optimizers use: on a GPU two
    launches for all tensors instead of two per tensor (a ResNet-18 and its head have
    about 70), with the same arithmetic, so the result is that of the per-tensor loop
    bit for bit.
    """
    targets = list(target.parameters())
    onlines = [p.detach() for p in online.parameters()]
    if len(targets) != len(onlines):
        raise ValueError(f"The target has {len(targets)} parameter tensors and the online network {len(onlines)}.")
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, onlines, alpha=1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: m = final - (final - base) * (cos(pi * step / total) + 1) / 2."""
    progress = min(step / max(1, total_steps), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
