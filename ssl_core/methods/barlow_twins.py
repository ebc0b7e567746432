"""Barlow Twins: make the cross-correlation of two views' embeddings the identity.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021, https://arxiv.org/abs/2103.03230.

No negatives, predictor or momentum encoder: the redundancy-reduction term of
:class:`~ssl_core.losses.barlow_twins.BarlowTwinsLoss` keeps the embedding
dimensions decorrelated, which rules out a collapse to a constant.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_core.heads import projection_mlp
from ssl_core.losses.barlow_twins import BarlowTwinsLoss
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import BarlowTwinsConfig


class BarlowTwins(SSLMethod):
    """Backbone -> projector -> Barlow Twins loss between the two views.

    The projector is :func:`~ssl_core.heads.projection_mlp`: Linear-BN-ReLU blocks
    and a plain output layer, as in the paper ("The first two layers of the
    projector are followed by a batch normalization layer and rectified linear
    units") and lightly's ``BarlowTwinsProjectionHead``.

    Args:
        backbone: (B, 3, H, W) -> (B, feature_dim).
        feature_dim: the backbone's feature size.
        config: loss weight and projector sizes; see :class:`BarlowTwinsConfig`.
    """

    recipe = BarlowTwinsConfig
    num_views = 2
    # As in the paper (sec. 4): under SGD its ~1000x larger gradients blow the weights up
    # at the lightly recipe's lr, and short runs fall far below random init (docs/methods.md).
    optimizer = "lars"

    def __init__(self, backbone: nn.Module, feature_dim: int, config: BarlowTwinsConfig = BarlowTwinsConfig()) -> None:
        super().__init__(backbone, feature_dim)
        self.projection_head = projection_mlp(
            feature_dim, config.projection_hidden_dim, config.projection_dim, config.projection_layers
        )
        self.criterion = BarlowTwinsLoss(config.lambda_)

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x0, x1 = views
        # Each view passes on its own, as in the paper's Algorithm 1 and lightly's
        # benchmark, so every BatchNorm sees one view's statistics at a time.
        h0, h1 = self.backbone(x0).flatten(1), self.backbone(x1).flatten(1)  # (B, f) each
        z0, z1 = self.projection_head(h0), self.projection_head(h1)  # (B, d) each
        return StepOutput(loss=self.criterion(z0, z1), features=h0.detach())
