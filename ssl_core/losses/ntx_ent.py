"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709 (eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """Contrastive loss over two views: each view must find its twin among 2N - 1.

    Letters: n = batch size, d = projection dim.

    Args:
        temperature: softmax temperature tau; SimCLR's CIFAR recipe uses 0.5.

    Raises:
        ValueError: if temperature is not positive.

    Example:
        >>> loss = NTXentLoss(temperature=0.5)(z0, z1)  # z0, z1: (n, d)
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Mean loss over the 2n anchors; z0 and z1 are (n, d) projections of two views."""
        n = z0.shape[0]
        z = F.normalize(torch.cat([z0, z1]).float(), dim=1)  # (2n, d)
        logits = z @ z.T / self.temperature  # (2n, 2n)
        # An anchor is never its own negative.
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        # The positive of anchor i is its other view: i + n for the first half, i - n after.
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, targets)
