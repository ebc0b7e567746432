"""Small stand-ins and shared checks for the method tests: fast enough for many steps per test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssl_core.augment import Normalization
from ssl_core.data import ManifestDataset
from ssl_core.engine import TrainConfig, train


def tiny_backbone(feature_dim: int = 16) -> nn.Module:
    """conv-BN-ReLU-pool: (B, 3, H, W) -> (B, feature_dim), with BatchNorm like a ResNet."""
    return nn.Sequential(
        nn.Conv2d(3, feature_dim, 3, 2, 1),
        nn.BatchNorm2d(feature_dim),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def assert_backbone_grads_match(ours: nn.Module, theirs: nn.Module) -> None:
    """Gradients of two copies of a backbone agree (after each ran its own backward).

    One absolute tolerance for all: the conv bias before BatchNorm has a true gradient
    of 0, so its float noise (~1e-5) has no meaningful relative error.
    """
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

    return nn.Sequential(
        *block(3, width, 1),
        *block(width, 2 * width, 2),
        *block(2 * width, 4 * width, 2),
        *block(4 * width, 8 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def assert_only_the_online_network_learns(
    method, momentum_parameters: list[nn.Parameter], views, feature_dim: int
) -> None:
    """One step: a scalar loss and detached first-view features; every trainable
    parameter gets a gradient and the momentum network none (BYOL's target, MoCo's key encoder)."""
    output = method.training_step(views)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert output.features.shape == (views[0].shape[0], feature_dim) and not output.features.requires_grad
    output.loss.backward()
    assert all(p.grad is None for p in momentum_parameters)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.trainable_parameters())


def assert_momentum_network_is_cut_off(method, momentum_parameters: list[nn.Parameter], views) -> None:
    """The stop-gradient is in training_step itself, not only in requires_grad=False."""
    for p in momentum_parameters:
        p.requires_grad_(True)
    method.training_step(views).loss.backward()
    assert all(p.grad is None for p in momentum_parameters)


def assert_step_gives_first_view_features(method, views: list[torch.Tensor], feature_dim: int):
    """One training step: a finite scalar loss, the first view's backbone features (detached)
    as the engine's collapse watch needs, and a gradient for every trainable parameter.

    Returns the step's output, for the method's own check of its loss range.
    """
    output = method.train().training_step(views)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert output.features.shape == (views[0].shape[0], feature_dim) and not output.features.requires_grad
    torch.testing.assert_close(output.features, method.backbone(views[0]))
    output.loss.backward()
    assert all(p.grad is not None for p in method.trainable_parameters())
    return output


def assert_step_matches_a_reference_projector(
    method, projector: nn.Module, criterion: nn.Module, views: list[torch.Tensor], abs_tolerance: float
) -> None:
    """``training_step`` against a reference projection head and loss (lightly's) on a copy of the
    backbone, each view forwarded on its own: the same loss and the same backbone gradients.

    ``projector`` gets the method's projection-head weights (lightly's heads name them ``layers.*``).
    """
    backbone = copy.deepcopy(method.backbone)
    projector.load_state_dict({f"layers.{k}": v for k, v in method.projection_head.state_dict().items()})
    x0, x1 = views
    expected = criterion(projector(backbone(x0).flatten(1)), projector(backbone(x1).flatten(1)))
    expected.backward()
    loss = method.training_step([x0, x1]).loss
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=abs_tolerance)
    assert_backbone_grads_match(method.backbone, backbone)


def assert_checkpoint_round_trips(method, fresh, warm_up_views, check_views) -> dict:
    """``fresh`` (built with another seed) restores ``method``'s checkpoint exactly; returns the state.

    ``warm_up_views`` go through one training step first, so the BatchNorm running
    statistics are off their defaults and checked too.
    """
    method.train().training_step(warm_up_views)
    state = method.checkpoint_state()
    fresh.load_checkpoint_state(state)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    torch.testing.assert_close(fresh.training_step(check_views).loss, method.training_step(check_views).loss)
    return state


def train_two_epochs_on_real_images(method, cifar_folder, checkpoint_dir):
    """Two engine epochs on real CIFAR images (the method's own views, SimCLR-style for
    Barlow Twins and SimSiam): the first conv moves, nothing collapses.

    Returns the training history for the method's own loss-range checks.
    """
    transform = method.train_transform(method.view_config(32), Normalization())
    dataset = ManifestDataset(cifar_folder, splits=["train"], transform=transform)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.06, seed=3, device="cpu", precision="fp32")
    before = method.backbone[0].weight.detach().clone()
    history = train(method, dataset, config, checkpoint_dir)
    assert len(history.epochs) == 2
    assert not any(e.collapsed for e in history.epochs)
    assert not torch.equal(before, method.backbone[0].weight)
    return history
