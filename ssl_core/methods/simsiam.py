"""SimSiam: a Siamese network that predicts one view's projection from the other's.

Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021,
https://arxiv.org/abs/2011.10566.

No negatives, no momentum encoder: what keeps the embeddings from collapsing is
the stop-gradient on the target branch (paper sec. 4.1), written below as
``z.detach()``.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_core.heads import projection_mlp
from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.methods.base import SSLMethod, StepOutput
from ssl_core.methods.recipes import SimSiamConfig


def projection_mlp_with_output_bn(input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> nn.Sequential:
    """:func:`~ssl_core.heads.projection_mlp` with BN on its output layer too.

    "The projection MLP (in f) has BN applied to each fully-connected (fc) layer,
    including its output fc. Its output fc has no ReLU." (SimSiam, sec. 3). As in
    the official code and lightly's ``SimSiamProjectionHead``, the output BN has no
    affine parameters, and the output fc no bias, which that BN would cancel.
    """
    *hidden, last = projection_mlp(input_dim, hidden_dim, output_dim, num_layers)
    return nn.Sequential(
        *hidden,
        nn.Linear(last.in_features, output_dim, bias=False),
        nn.BatchNorm1d(output_dim, affine=False),
    )


class SimSiam(SSLMethod):
    """Backbone -> projection MLP f -> z; prediction MLP h -> p; D(p0, sg(z1)) + D(p1, sg(z0)).

    Args:
        backbone: (B, 3, H, W) -> (B, feature_dim).
        feature_dim: the backbone's feature size.
        config: head sizes; see :class:`SimSiamConfig`.
    """

    recipe = SimSiamConfig
    # The lightly benchmark's fixed lr: "no lr-scaling, results in better training stability".
    scales_lr_with_batch = False
    num_views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SimSiamConfig = SimSiamConfig()) -> None:
        super().__init__(backbone, feature_dim)
        self.projection_head = projection_mlp_with_output_bn(
            feature_dim, config.projection_hidden_dim, config.projection_dim, config.projection_layers
        )
        # "BN applied to its hidden fc layers. Its output fc does not have BN or ReLU.
        # This MLP has 2 layers." (sec. 3): exactly projection_mlp.
        self.prediction_head = projection_mlp(
            config.projection_dim, config.prediction_hidden_dim, config.projection_dim
        )
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, views: list[torch.Tensor]) -> StepOutput:
        x0, x1 = views
        # Each view passes on its own, as in the paper's pseudo-code and lightly's
        # benchmark, so every BatchNorm sees one view's statistics at a time.
        h0, h1 = self.backbone(x0).flatten(1), self.backbone(x1).flatten(1)  # (B, f) each
        z0, z1 = self.projection_head(h0), self.projection_head(h1)  # (B, d) each
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)  # (B, d) each
        # Eq. 4: the other view's projection is a constant target (stop-gradient).
        loss = 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        return StepOutput(loss=loss, features=h0.detach())
