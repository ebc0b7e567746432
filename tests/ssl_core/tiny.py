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


def small_convnet(width: int = 32) -> nn.Module:
    """Four conv-BN-ReLU blocks (strides 1, 2, 2, 2) and global pooling: (B, 3, 32, 32) -> (B, 8 * width).

    About 15M multiply-adds per 32 px image, 1/37 of the CIFAR ResNet-18: big enough
    for self-supervised features to beat random ones within a few epochs on CPU.
    """
    def block(channels_in: int, channels_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU()]

    return nn.Sequential(*block(3, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2),
                         *block(4 * width, 8 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
