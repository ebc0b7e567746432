"""VICReg: two views agree, and each keeps its variance and decorrelates its dimensions.

Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022, https://arxiv.org/abs/2105.04906.

No negatives, predictor, momentum encoder or batch-wide normalization of the
embeddings: the variance term keeps every dimension's std above 1 (against
collapse to a constant), and the covariance term decorrelates the dimensions
(against collapse onto a few), each on its own branch
(:class:`~ssl_core.losses.vicreg.VICRegLoss`).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_core.heads import projection_mlp
from ssl_core.losses.vicreg import VICRegLoss
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import VICRegConfig


class VICReg(SSLMethod):
    """Backbone -> expander -> VICReg loss between the two views' embeddings.

    The expander is :func:`~ssl_core.heads.projection_mlp`: "The first two layers of
    the expander are followed by a batch normalization layer and rectified linear
    units" (sec. 4.1), as lightly's ``VICRegProjectionHead``.

    Args:
        backbone: (B, 3, H, W) -> (B, feature_dim).
        feature_dim: the backbone's feature size.
        config: loss weights and expander sizes; see :class:`VICRegConfig`.
    """

    recipe = VICRegConfig
    num_views = 2
    # As in the paper (sec. 4.1): under SGD the loss diverges at the lightly recipe's lr (docs/methods.md).
    optimizer = "lars"

    def __init__(self, backbone: nn.Module, feature_dim: int, config: VICRegConfig = VICRegConfig()) -> None:
        super().__init__(backbone, feature_dim)
        self.projection_head = projection_mlp(
            feature_dim, config.projection_hidden_dim, config.projection_dim, config.projection_layers
        )
        self.criterion = VICRegLoss(config.lambda_, config.mu, config.nu)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x0, x1 = views
        # Each view passes on its own, as in the paper's Algorithm 1 (z_a = f(x_a),
        # z_b = f(x_b)), so every BatchNorm sees one view's statistics at a time.
        h0, h1 = self.backbone(x0).flatten(1), self.backbone(x1).flatten(1)  # (B, f) each
        z0, z1 = self.projection_head(h0), self.projection_head(h1)  # (B, d) each
        return StepOutput(loss=self.criterion(z0, z1), features=h0.detach())
