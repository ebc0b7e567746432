"""The VICReg loss: invariance between two views, variance and covariance within each.

Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022, https://arxiv.org/abs/2105.04906 (Section 3
and Algorithm 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.distributed import gather_with_grad
from ssl_core.losses.off_diagonal import off_diagonal


class VICRegLoss(nn.Module):
    """lambda * s(Z, Z') + mu * (v(Z) + v(Z')) / 2 + nu * (c(Z) + c(Z')).

    - invariance s(Z, Z') = mean over all n * d elements of (Z - Z')^2;
    - variance v(Z) = (1 / d) sum_j relu(gamma - sqrt(Var(Z[:, j]) + eps)), with the
      unbiased (n - 1) variance, a hinge that keeps every dimension's std above gamma;
    - covariance c(Z) = (1 / d) sum_{i != j} C(Z)_ij^2, with
      C(Z) = (Z - mean)^T (Z - mean) / (n - 1), which decorrelates the dimensions.

    Where the paper and the code differ: the paper's loss and Algorithm 1 *sum* the two
    branches' variance terms, mu * (v(Z) + v(Z')), while the official code
    (facebookresearch/vicreg, main_vicreg.py), released with the paper and run with the
    same weights 25 / 25 / 1, and lightly's ``VICRegLoss`` *average* them. We average, as
    that code does, so that the paper's weights behave as in the released code and our
    numbers match lightly's; for the formula as printed, pass 2 * mu. The two covariance
    terms are summed everywhere. Lightly fixes gamma at 1 and centers z before taking the
    variance, which changes nothing. The rest (unbiased variance, eps inside the sqrt, the
    n - 1 covariance denominator, the division by d) is the same in all three.

    On several processes (DDP), as in the official code (``FullGatherLayer``) and lightly's
    ``gather_distributed=True``: the invariance term is the mean over this rank's rows,
    whose mean over the ranks is the global one, while the variance and covariance terms
    are taken over the global batch, gathered from all ranks with its gradients.

    Letters: n = batch size (on several processes, of one rank), w = number of ranks,
    d = embedding dim.

    Args:
        lambda_: weight of the invariance term; 25 in the paper.
        mu: weight of the variance term; 25 in the paper.
        nu: weight of the covariance term; 1 in the paper.
        gamma: target standard deviation of each dimension; 1 in the paper.
        eps: added to the variance under the sqrt, so that the gradient stays finite when a
            dimension collapses; 1e-4 in the paper.

    Raises:
        ValueError: if a weight is negative, gamma or eps is not positive, or (in forward)
            if the inputs differ in shape or hold fewer than 2 rows, too few for a variance.

    Example:
        >>> loss = VICRegLoss(lambda_=25.0, mu=25.0, nu=1.0)(z0, z1)  # z0, z1: (n, d)
    """

    def __init__(
        self, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0, gamma: float = 1.0, eps: float = 1e-4
    ) -> None:
        super().__init__()
        for name, weight in (("lambda_", lambda_), ("mu", mu), ("nu", nu)):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.lambda_, self.mu, self.nu, self.gamma, self.eps = lambda_, mu, nu, gamma, eps

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss of (n, d) projections of the two views; symmetric in z0 and z1.

        A collective on several processes: every rank must call it, with the same shapes.
        """
        if z0.shape != z1.shape:
            raise ValueError(f"z0 and z1 must have the same (n, d) shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
        n = z0.shape[0]
        if n < 2:
            raise ValueError(f"VICReg takes variances over the batch and needs n >= 2 rows, got n={n}")
        # Out of autocast: the covariance term sums d^2 squared entries of a (d, d) matrix,
        # and in bf16 the rounding of each entry would add a noise floor that swamps the signal.
        with torch.autocast(device_type=z0.device.type, enabled=False):
            z0, z1 = z0.float(), z1.float()
            invariance = F.mse_loss(z0, z1)
            z0, z1 = gather_with_grad(z0), gather_with_grad(z1)  # (w n, d) each
            variance_term = (variance(z0, self.gamma, self.eps) + variance(z1, self.gamma, self.eps)) / 2
            covariance_term = covariance(z0) + covariance(z1)
            return self.lambda_ * invariance + self.mu * variance_term + self.nu * covariance_term


def variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z): mean over the d dimensions of relu(gamma - sqrt(unbiased var + eps))."""
    std = torch.sqrt(z.var(dim=0) + eps)  # (d,)
    return F.relu(gamma - std).mean()


def covariance(z: torch.Tensor) -> torch.Tensor:
    """c(Z): sum of the squared off-diagonal entries of the (n - 1) covariance, over d."""
    n, d = z.shape
    centered = z - z.mean(dim=0)  # (n, d)
    c = centered.T @ centered / (n - 1)  # (d, d)
    # The diagonal holds the variances, which the variance term handles.
    return off_diagonal(c).pow(2).sum() / d
