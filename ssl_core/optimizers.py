"""The pretraining optimizers: SGD with momentum, and LARS for the methods that need it.

LARS (You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks",
https://arxiv.org/abs/1708.03888) is SGD whose step for each weight tensor is
rescaled by a *trust ratio*, ``eta * ||w|| / (||g|| + weight_decay * ||w||)``, so
every layer moves by about the same fraction of its norm whatever the scale of its
gradient. VICReg and Barlow Twins train with it in their papers: their losses are
not invariant to the embeddings' scale, and under plain SGD a step that enlarges
the weights steepens the next one (``docs/methods.md`` measures the divergence).

As in those papers' code and lightly's benchmarks, biases and normalization
parameters (every tensor of one dimension) get neither the trust ratio nor weight
decay.

Usage::

    optimizer = build_optimizer("lars", method.trainable_parameters(), lr=0.24, momentum=0.9, weight_decay=5e-4)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "lars")

# eta, the fraction of its norm a layer may move per unit of lr. The papers' ImageNet
# runs use 1e-3 at lr 0.2 x batch/256 (so ~1.6 at batch 2,048); solo-learn's CIFAR
# recipes for VICReg and Barlow Twins use 0.02 at lr 0.3 for batch 256, which keeps
# the relative step near what the lightly recipe's lr (0.06 x batch/128) gives here.
TRUST_COEFFICIENT = 0.02


class LARS(torch.optim.SGD):
    """SGD with layer-wise trust ratios on the groups marked ``lars=True``.

    The trust ratio is the paper's (Algorithm 1): the gradient plus weight decay is
    scaled by ``trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)``,
    then momentum and the learning rate apply as in :class:`torch.optim.SGD`. A
    tensor whose weight or gradient norm is zero keeps a ratio of 1. Groups without
    ``lars`` (or with ``lars=False``) are plain SGD.

    The ratios are computed with ``torch._foreach_*`` kernels and never read on the
    host, so a step has no GPU sync; the update itself is SGD's (fused on CUDA when
    asked). Its state dict is SGD's.

    Args:
        params: parameters or param groups, as for SGD; see :func:`lars_param_groups`.
        trust_coefficient: eta.
        eps: keeps the ratio finite for a zero denominator.
        **sgd: lr, momentum, weight_decay, fused, ... as for :class:`torch.optim.SGD`.

    Raises:
        ValueError: for a negative ``trust_coefficient`` or ``eps``.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        trust_coefficient: float = TRUST_COEFFICIENT,
        eps: float = 1e-8,
        **sgd: object,
    ) -> None:
        if trust_coefficient < 0 or eps < 0:
            raise ValueError(f"trust_coefficient ({trust_coefficient}) and eps ({eps}) must be >= 0")
        super().__init__(params, **sgd)  # type: ignore[arg-type]
        for group in self.param_groups:
            group.setdefault("lars", False)
            group.setdefault("trust_coefficient", trust_coefficient)
            group.setdefault("eps", eps)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        adapted = [group for group in self.param_groups if group["lars"]]
        for group in adapted:
            self._fold_weight_decay_and_trust_ratio_(group)
        # The weight decay is in the gradients now: SGD must not add it again.
        decays = [group["weight_decay"] for group in adapted]
        for group in adapted:
            group["weight_decay"] = 0.0
        try:
            super().step()
        finally:
            for group, decay in zip(adapted, decays, strict=True):
                group["weight_decay"] = decay
        return loss

    @staticmethod
    def _fold_weight_decay_and_trust_ratio_(group: dict) -> None:
        """``g <- ratio * (g + weight_decay * w)`` for every parameter of ``group`` with a gradient."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        weight_norms = torch._foreach_norm(params)
        grad_norms = torch._foreach_norm(grads)  # of the gradient alone, as in the paper
        decay = group["weight_decay"]
        if decay:
            torch._foreach_add_(grads, params, alpha=decay)
        # One vector of norms, so that the ratios cost a few kernels rather than a few per tensor.
        w, g = torch.stack(weight_norms), torch.stack(grad_norms)
        ratios = torch.where((w > 0) & (g > 0), group["trust_coefficient"] * w / (g + decay * w + group["eps"]), 1.0)
        torch._foreach_mul_(grads, list(ratios.unbind()))


def lars_param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Weights adapted by LARS and decayed; biases and norm parameters (1-d tensors) neither.

    Empty groups are left out.
    """
    weights, others = [], []
    for parameter in params:
        (weights if parameter.ndim > 1 else others).append(parameter)
    groups = [
        {"params": weights, "lars": True, "weight_decay": weight_decay},
        {"params": others, "lars": False, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    momentum: float,
    weight_decay: float,
    fused: bool | None = None,
) -> torch.optim.SGD:
    """``sgd`` (every parameter decayed alike, as in the lightly benchmark) or ``lars`` over ``params``.

    Raises:
        ValueError: for another ``name``.
    """
    if name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    elif name == "lars":
        optimizer = LARS(lars_param_groups(params, weight_decay), lr=lr, momentum=momentum, fused=fused)
    else:
        raise ValueError(f"optimizer = {name!r}: must be one of {', '.join(repr(o) for o in OPTIMIZERS)}")
    if fused and momentum:
        zero_momentum_buffers_(optimizer)
    return optimizer


def zero_momentum_buffers_(optimizer: torch.optim.SGD) -> None:
    """Gives every parameter a zero momentum buffer before the first step, which then updates it as
    any later step does: ``0 * momentum + gradient`` is the gradient, what a first step stores (SGD's
    ``dampening`` is 0 here).

    Why: fused SGD creates its buffers with ``torch.empty_like`` on its first step and leaves them to
    the kernel, which returns early where a gradient scaler found an overflow. fp16-mixed's first
    step often overflows at the initial loss scale, so the second step would go on from uninitialized
    memory: weights of 1e28 after two steps (measured with torch 2.14 on the CPU; LibreYOLO#771 met the
    same with torch 2.11 on a GPU).
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            optimizer.state[parameter].setdefault("momentum_buffer", torch.zeros_like(parameter))


def scaled_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_norm: float | None) -> None:
    """One update from the gradients of ``scaler.scale(loss).backward()``, clipped to a global norm of
    ``clip_norm`` (None: not clipped); skipped, by the scaler, where they overflowed fp16.

    The gradients are unscaled first, since LARS's trust ratios and the clipping read their norms: a
    fused optimizer would otherwise unscale them only inside its own kernel, after LARS had taken a
    ratio 65,536 times too small. With a disabled scaler (fp32, bf16) this is ``optimizer.step()``
    after the clipping.
    """
    scaler.unscale_(optimizer)
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_norm)
    scaler.step(optimizer)
    scaler.update()
