"""The Barlow Twins loss: push the cross-correlation of two views' embeddings to I.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021, https://arxiv.org/abs/2103.03230 (eq. 1 and Algorithm 1).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_core.distributed import gather_with_grad
from ssl_core.losses.off_diagonal import off_diagonal

# BatchNorm1d's default eps: the official code standardizes with BatchNorm1d(affine=False).
STANDARDIZE_EPS = 1e-5


class BarlowTwinsLoss(nn.Module):
    """sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2, C the cross-correlation matrix.

    Each embedding dimension is standardized over the batch, then
    C = z0n^T z1n / n: C_ij is the correlation between dimension i of the first
    view and dimension j of the second. The first term makes the two views agree
    (invariance), the second decorrelates the dimensions (redundancy reduction).

    The standardization divides by the *biased* std, sqrt(var + 1e-5), as the
    official code (``BatchNorm1d(affine=False)``) and lightly do; the paper's
    pseudo-code writes ``torch.std``, which is unbiased and so scales C by n / (n - 1).

    On several processes (DDP) the batch is the global one: the embeddings of all
    ranks are gathered with their gradients before the standardization, so C and the
    loss are those of the concatenated batch, the same on every rank. The official
    code (facebookresearch/barlowtwins, main.py) computes the same C from SyncBatchNorm
    statistics and an all-reduce of the per-rank products; lightly's
    ``gather_distributed`` all-reduces C too but standardizes each rank's batch on its
    own. Gathering moves w n d numbers per view where the all-reduce moves d^2, and
    costs each rank w n d^2 operations for C instead of n d^2.

    Letters: n = batch size (on several processes, of one rank), w = number of ranks,
    d = embedding dim.

    Args:
        lambda_: weight of the redundancy-reduction term; 5e-3 in the paper.

    Raises:
        ValueError: if lambda_ is negative, or (in forward) if the inputs differ in
            shape or hold fewer than 2 rows, too few to standardize.

    Example:
        >>> loss = BarlowTwinsLoss(lambda_=5e-3)(z0, z1)  # z0, z1: (n, d)
    """

    def __init__(self, lambda_: float = 5e-3) -> None:
        super().__init__()
        if lambda_ < 0:
            raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
        self.lambda_ = lambda_

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss of (n, d) projections of the two views; symmetric in z0 and z1.

        A collective on several processes: every rank must call it, with the same shapes.
        """
        if z0.shape != z1.shape:
            raise ValueError(f"z0 and z1 must have the same (n, d) shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
        z0, z1 = gather_with_grad(z0), gather_with_grad(z1)  # (w n, d) each
        n = z0.shape[0]  # the global batch from here on
        if n < 2:
            raise ValueError(f"Barlow Twins standardizes over the batch and needs n >= 2 rows, got n={n}")
        # Out of autocast: in bf16, rounding each of the d^2 entries of C would add a
        # noise floor to the sum of squared off-diagonal terms that swamps the signal.
        with torch.autocast(device_type=z0.device.type, enabled=False):
            z0n, z1n = standardize(z0.float()), standardize(z1.float())  # (n, d) each
            c = z0n.T @ z1n / n  # (d, d)
        on_diagonal = torch.diagonal(c)  # (d,)
        return (1 - on_diagonal).pow(2).sum() + self.lambda_ * off_diagonal(c).pow(2).sum()


def standardize(z: torch.Tensor) -> torch.Tensor:
    """(z - mean) / sqrt(var + eps) per column of an (n, d) batch; biased var, as BatchNorm."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, correction=0) + STANDARDIZE_EPS)
