"""Barlow Twins: make the cross-correlation of two views' embeddings the identity.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021, https://arxiv.org/abs/2103.03230.

No negatives, predictor or momentum encoder: the redundancy-reduction term of
:class:`~ssl_core.losses.barlow_twins.BarlowTwinsLoss` keeps the embedding
dimensions decorrelated, which rules out a collapse to a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_core.config_checks import require_positive
from ssl_core.heads import projection_mlp
from ssl_core.losses.barlow_twins import BarlowTwinsLoss
from ssl_core.methods.base import SSLMethod, StepOutput


@dataclass(frozen=True)
class BarlowTwinsConfig:
    """Barlow Twins recipe; defaults are the lightly CIFAR-10 benchmark's for ResNet-18.

    That benchmark trains with SGD at lr 0.06 * batch_size / 128 (momentum 0.9,
    weight decay 5e-4, cosine decay), the same linear scaling as its SimCLR.

    Short schedules need a far smaller SGD learning rate. The loss sums the d^2
    entries of the cross-correlation, so its gradients are about 1000x those of
    NT-Xent (measured at initialization: gradient norm 2627 vs 2.7). At lr 0.12
    the first step multiplies the conv weight norms by 20-35; BatchNorm makes
    the network blind to that scale, so every later step is effectively
    ~1000x smaller, and only weight decay over a long schedule recovers. The
    paper avoids this with LARS, which sizes each layer's step by its weight
    norm. Measured on 2,000 CIFAR-10 images: with a small conv net, 3 epochs at
    lr 1e-4 beat the random-init kNN by 2.8 points while every lr from 0.01 to
    0.24 ended below it (``tests/ssl_core/test_methods_learn.py``); with the CIFAR
    ResNet-18, 4 epochs at lr 3e-5 / 1e-4 / 1e-3 / 0.06 ended at +0.3 / -0.4 /
    -5.0 / -8.2 points (``benchmarks/results/cpu-cifar10-4epoch*``).

    Attributes:
        lambda_: weight of the redundancy-reduction term; 5e-3 in the paper.
        projection_hidden_dim: width of the projector's hidden layers.
        projection_dim: size of the embeddings whose cross-correlation is taken.
        projection_layers: linear layers of the projector; 2 for CIFAR-size training
            as in the lightly benchmark, 3 (of width 8192) in the paper's ImageNet recipe.
    """

    lambda_: float = 5e-3
    projection_hidden_dim: int = 2048
    projection_dim: int = 2048
    projection_layers: int = 2

    def __post_init__(self) -> None:
        require_positive(self, "lambda_", "projection_hidden_dim", "projection_dim", "projection_layers")


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

    num_views = 2

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
