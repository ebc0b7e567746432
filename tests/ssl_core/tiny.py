"""Small stand-ins shared by the method tests: fast enough for many steps per test."""

from __future__ import annotations

from torch import nn


def tiny_backbone(feature_dim: int = 16) -> nn.Module:
    """conv-BN-ReLU-pool: (B, 3, H, W) -> (B, feature_dim), with BatchNorm like a ResNet."""
    return nn.Sequential(nn.Conv2d(3, feature_dim, 3, 2, 1), nn.BatchNorm2d(feature_dim), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def assert_backbone_grads_match(ours: nn.Module, theirs: nn.Module) -> None:
    """Gradients of two copies of a backbone agree (after each ran its own backward).

    One absolute tolerance for all: the conv bias before BatchNorm has a true gradient
    of 0, so its float noise (~1e-5) has no meaningful relative error.
    """
    import torch

    ours_flat = torch.cat([p.grad.flatten() for p in ours.parameters()])
    theirs_flat = torch.cat([p.grad.flatten() for p in theirs.parameters()])
    torch.testing.assert_close(ours_flat, theirs_flat, atol=1e-4, rtol=1e-4)
