"""Small stand-ins shared by the method tests: fast enough for many steps per test."""

from __future__ import annotations

from torch import nn


def tiny_backbone(feature_dim: int = 16) -> nn.Module:
    """conv-BN-ReLU-pool: (B, 3, H, W) -> (B, feature_dim), with BatchNorm like a ResNet."""
    return nn.Sequential(nn.Conv2d(3, feature_dim, 3, 2, 1), nn.BatchNorm2d(feature_dim), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
