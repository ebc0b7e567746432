"""SimCLR: contrastive learning between two augmented views.

Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_core.config_checks import require_positive
from ssl_core.heads import projection_mlp
from ssl_core.losses import NTXentLoss
from ssl_core.methods.base import SSLMethod, StepOutput


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR recipe; defaults are the lightly CIFAR-10 benchmark's."""

    temperature: float = 0.5
    projection_hidden_dim: int = 512
    projection_dim: int = 128

    def __post_init__(self) -> None:
        require_positive(self, "temperature", "projection_hidden_dim", "projection_dim")


class SimCLR(SSLMethod):
    """Backbone -> 2-layer projection MLP -> NT-Xent between the two views."""

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
