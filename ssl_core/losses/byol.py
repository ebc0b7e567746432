"""BYOL's normalized mean squared error between a prediction and a target projection.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020, https://arxiv.org/abs/2006.07733 (eq. 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedMSELoss(nn.Module):
    """||p / ||p|| - z / ||z|| ||^2 = 2 - 2 cos(p, z), averaged over the batch.

    Letters: n = batch size, d = projection dim.

    The loss is pure and symmetric in its arguments: it stops no gradient. BYOL
    stops the gradient into the target ``z``; the method writes that ``detach()``.
    Values lie in [0, 4]: 0 for aligned vectors, 2 for orthogonal ones.

    Example:
        >>> loss = NormalizedMSELoss()(p, z.detach())  # p, z: (n, d)
    """

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Args: p (n, d) online predictions, z (n, d) target projections."""
        p = F.normalize(p.float(), dim=1)  # (n, d)
        z = F.normalize(z.float(), dim=1)  # (n, d)
        # A product and a sum, not an einsum: autocast leaves them in fp32, and 2 - 2 cos
        # near cos = 1 would lose most of its digits in bf16.
        cosine = (p * z).sum(dim=1)  # (n,)
        return (2.0 - 2.0 * cosine).mean()
