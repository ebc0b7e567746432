"""InfoNCE with a memory bank of negative keys, the contrastive loss of MoCo.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020, https://arxiv.org/abs/1911.05722 (eq. 1 and Algorithm 1); MoCo v2,
Chen et al. 2020, https://arxiv.org/abs/2003.04297, keeps the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """Each query must pick its own key out of {its key} + the bank's negatives.

    Letters: n = batch size, d = projection dim, k = memory bank size.

    The loss is pure: it reads the bank and never writes it. The caller (MoCo)
    enqueues the new keys explicitly once the loss is computed.

    On several processes (DDP) it needs no communication: each rank's queries meet
    their own keys and the bank, which MoCo keeps equal on all ranks by enqueueing
    everyone's keys; the mean of the ranks' losses is the loss of the whole batch.

    Args:
        temperature: softmax temperature tau; MoCo v2 uses 0.2 on ImageNet, the
            lightly CIFAR-10 benchmark 0.1.

    Raises:
        ValueError: if temperature is not positive.

    Example:
        >>> loss = InfoNCELoss(temperature=0.1)(query, key, bank)  # (n, d), (n, d), (k, d)
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, query: torch.Tensor, key: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """Mean loss over the n queries.

        Args:
            query: (n, d) query projections.
            key: (n, d) keys; key[i] is the positive of query[i].
            bank: (k, d) negative keys (past batches' keys).
        """
        # fp32 even under bf16 autocast: bf16 keeps logits near 1 / temperature = 10
        # to only 0.06, coarse next to the gaps between positive and negatives.
        with torch.autocast(device_type=query.device.type, enabled=False):
            q = F.normalize(query.float(), dim=1)  # (n, d)
            positive = F.normalize(key.float(), dim=1)  # (n, d)
            negatives = F.normalize(bank.float(), dim=1)  # (k, d)
            l_pos = torch.einsum("nd,nd->n", q, positive).unsqueeze(1)  # (n, 1)
            l_neg = torch.einsum("nd,kd->nk", q, negatives)  # (n, k)
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature  # (n, 1 + k)
            # The positive sits in column 0 of every row.
            targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # (n,)
            return F.cross_entropy(logits, targets)
