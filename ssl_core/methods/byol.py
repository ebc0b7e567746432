"""BYOL: predict a slowly moving target network's projection of the other view.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020, https://arxiv.org/abs/2006.07733.

The online network (backbone -> projection -> prediction) is trained; the target
network (backbone -> projection) is a frozen copy that follows it by EMA, with a
momentum that rises from ``base_momentum`` to 1 on a cosine schedule (sec. 3.2). No
negatives: the predictor and the stop-gradient on the target keep it from collapsing.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_core.heads import projection_mlp
from ssl_core.losses.byol import NormalizedMSELoss
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import BYOLConfig
from ssl_core.momentum import cosine_momentum, ema_update, frozen_copy


class BYOL(SSLMethod):
    """Online backbone -> projection -> prediction regressed onto the target's projection.

    Letters: B = batch size, f = feature_dim, p = projection_dim.

    Args:
        backbone: (B, 3, H, W) -> (B, feature_dim); its copy becomes the target backbone.
        feature_dim: the backbone's feature size.
        config: the recipe.
    """

    recipe = BYOLConfig
    compiled_networks = ("backbone", "target_backbone")
    num_views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, config: BYOLConfig = BYOLConfig()) -> None:
        super().__init__(backbone, feature_dim)
        self.projection_head = projection_mlp(feature_dim, config.projection_hidden_dim, config.projection_dim)
        self.prediction_head = projection_mlp(
            config.projection_dim, config.prediction_hidden_dim, config.projection_dim
        )
        # The target network: no gradient, never in the optimizer, but checkpointed (its
        # EMA weights cannot be rebuilt from anything else, so frozen_prefixes stays ()).
        self.target_backbone = frozen_copy(backbone)
        self.target_projection_head = frozen_copy(self.projection_head)
        self.criterion = NormalizedMSELoss()
        self.base_momentum = config.base_momentum
        self.momentum = config.base_momentum  # set per step by before_step

    def before_step(self, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)

    def embed_online(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features (B, f) and predictions (B, p) of the online network."""
        features = self.backbone(images).flatten(1)  # (B, f)
        return features, self.prediction_head(self.projection_head(features))  # (B, p)

    @torch.no_grad()
    def embed_target(self, images: torch.Tensor) -> torch.Tensor:
        """Target projections (B, p); no graph is built."""
        return self.target_projection_head(self.target_backbone(images).flatten(1))

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x0, x1 = views
        # Separate forwards per view, as in BYOL: BatchNorm sees one view at a time.
        h0, p0 = self.embed_online(x0)  # (B, f), (B, p)
        _, p1 = self.embed_online(x1)  # (B, p)
        z0, z1 = self.embed_target(x0), self.embed_target(x1)  # (B, p) each
        # Stop-gradient on the targets (sec. 3.1, sg(z')); the paper sums the two
        # directions, we average them as lightly does (the sum only doubles the gradients).
        loss = 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        return StepOutput(loss=loss, features=h0.detach())

    def after_optimizer_step(self) -> None:
        ema_update(self.backbone, self.target_backbone, self.momentum)
        ema_update(self.projection_head, self.target_projection_head, self.momentum)
