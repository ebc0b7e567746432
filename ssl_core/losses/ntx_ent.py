"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709 (eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.distributed import gather_with_grad, rank


class NTXentLoss(nn.Module):
    """Contrastive loss over two views: each view must find its twin among 2N - 1.

    On several processes (DDP) N is the global batch: every rank's anchors meet the
    other views of all ranks as negatives, gathered with their gradients, as SimCLR
    does across TPU cores (``tpu_cross_replica_concat``, sec. 2.2 "Training with large
    batch size") and lightly's ``gather_distributed=True``. Each rank returns the loss
    of its own 2n anchors; the mean over the ranks is the single-process loss of the
    concatenated batch, and DDP's gradient averaging makes it the one optimized.

    Letters: n = batch size per rank, w = number of ranks (N = w n), d = projection dim.

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
        """Mean loss over this rank's 2n anchors; z0 and z1 are (n, d) projections of two views.

        A collective on several processes: every rank must call it, with the same n.
        """
        n = z0.shape[0]
        anchors = F.normalize(torch.cat([z0, z1]).float(), dim=1)  # (2n, d)
        # Rank r's anchors are rows [2n r, 2n (r + 1)) of the keys: the same tensor on one process.
        keys = gather_with_grad(anchors)  # (2n w, d)
        logits = anchors @ keys.T / self.temperature  # (2n, 2n w)
        offset = 2 * n * rank()
        # An anchor is never its own negative: anchor i is key offset + i.
        own_key = torch.eye(2 * n, keys.shape[0], dtype=torch.bool, device=anchors.device).roll(offset, dims=1)
        logits = logits.masked_fill(own_key, float("-inf"))
        # The positive of anchor i is its other view: i + n for the first half, i - n after.
        # (Made on the device: a copy from the host would make the host wait for the GPU every step.)
        targets = (torch.arange(2 * n, device=anchors.device) + n) % (2 * n) + offset  # (2n,)
        return F.cross_entropy(logits, targets)
