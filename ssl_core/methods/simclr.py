"""SimCLR: contrastive learning between two augmented views.

Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_core.heads import projection_mlp
from ssl_core.losses import NTXentLoss
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import SimCLRConfig


class SimCLR(SSLMethod):
    """Backbone -> 2-layer projection MLP -> NT-Xent between the two views."""

    recipe = SimCLRConfig
    num_views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SimCLRConfig = SimCLRConfig()) -> None:
        super().__init__(backbone, feature_dim)
        self.projection_head = projection_mlp(feature_dim, config.projection_hidden_dim, config.projection_dim)
        self.criterion = NTXentLoss(config.temperature)
        self.forward_per_view = config.forward_per_view

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x0, x1 = views
        if self.forward_per_view:
            # Each view on its own: every BatchNorm sees one view's statistics at a time.
            h0, h1 = self.backbone(x0).flatten(1), self.backbone(x1).flatten(1)  # (B, f) each
            z0, z1 = self.projection_head(h0), self.projection_head(h1)  # (B, p) each
        else:
            # One forward over both views: BatchNorm sees the same statistics for each.
            h = self.backbone(torch.cat([x0, x1])).flatten(1)  # (2B, f)
            z0, z1 = self.projection_head(h).chunk(2)  # (B, p) each
            h0 = h[: x0.shape[0]]
        return StepOutput(loss=self.criterion(z0, z1), features=h0.detach())
