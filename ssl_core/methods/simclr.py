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

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x0, x1 = views
        # One forward over both views: BatchNorm sees the same statistics for each.
        h = self.backbone(torch.cat([x0, x1])).flatten(1)  # (2B, f)
        z0, z1 = self.projection_head(h).chunk(2)  # (B, p) each
        return StepOutput(loss=self.criterion(z0, z1), features=h[: x0.shape[0]].detach())
