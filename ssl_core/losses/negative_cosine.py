"""Negative cosine similarity, the distance D(p, z) of SimSiam.

Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021,
https://arxiv.org/abs/2011.10566 (eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NegativeCosineSimilarity(nn.Module):
    """D(p, z) = -cos(p, z), averaged over the batch; -1 when p and z point the same way.

    The loss is pure: it does not stop gradients. SimSiam's stop-gradient belongs to
    the method, which passes ``z.detach()`` (see :class:`~ssl_core.methods.simsiam.SimSiam`).

    Letters: n = batch size, d = embedding dim.

    Args:
        eps: floor of each vector's norm, as in ``torch.nn.functional.cosine_similarity``.

    Raises:
        ValueError: if eps is not positive, or (in forward) if p and z differ in shape.

    Example:
        >>> loss = NegativeCosineSimilarity()(p0, z1.detach())  # p0, z1: (n, d)
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean of -cos(p_i, z_i) over the n rows of the (n, d) inputs."""
        if p.shape != z.shape:
            raise ValueError(f"p and z must have the same (n, d) shape, got {tuple(p.shape)} and {tuple(z.shape)}")
        return -F.cosine_similarity(p.float(), z.float(), dim=1, eps=self.eps).mean()
