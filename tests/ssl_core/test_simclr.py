"""The SimCLR method's two forwards: both views at once (the default), or each view on its own.

The loss is tested in ``test_ntx_ent.py``; that SimCLR learns in a short CPU run, in
``test_methods_learn.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssl_core.losses import NTXentLoss
from ssl_core.methods.simclr import SimCLR, SimCLRConfig
from tests.ssl_core.tiny import (
    assert_backbone_grads_match,
    assert_step_gives_first_view_features,
    assert_step_matches_a_reference_projector,
    tiny_backbone,
)

FEATURE_DIM = 16
JOINT = SimCLRConfig(projection_hidden_dim=32, projection_dim=8)
PER_VIEW = SimCLRConfig(projection_hidden_dim=32, projection_dim=8, forward_per_view=True)

# These tensors are too small to gain from a second thread (see the fixture).
pytestmark = pytest.mark.usefixtures("single_thread")


def make_method(config: SimCLRConfig, seed: int = 0) -> SimCLR:
    torch.manual_seed(seed)
    return SimCLR(tiny_backbone(FEATURE_DIM), FEATURE_DIM, config)


def images(seed: int = 0, batch: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # The second view brighter, so that the two views' BatchNorm statistics differ.
    x0 = torch.randn(batch, 3, 16, 16, generator=generator)
    return [x0, 0.5 * torch.randn(batch, 3, 16, 16, generator=generator) + 1.0]


class Layers(nn.Module):
    """A copy of a head under the ``layers.*`` names that the reference check loads weights by."""

    def __init__(self, head: nn.Sequential) -> None:
        super().__init__()
        self.layers = copy.deepcopy(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_per_view_step_is_each_view_forwarded_alone() -> None:
    """The same loss and backbone gradients as the backbone and head run once per view, then NT-Xent."""
    method = make_method(PER_VIEW)
    reference = Layers(method.projection_head)
    assert_step_matches_a_reference_projector(method, reference, NTXentLoss(0.5), images(seed=1), abs_tolerance=1e-6)


def test_joint_step_normalizes_both_views_with_one_batch_statistic() -> None:
    """The default: one forward over both views concatenated, the same loss and gradients as written out."""
    method = make_method(JOINT)
    backbone, head = copy.deepcopy(method.backbone), copy.deepcopy(method.projection_head)
    x0, x1 = images(seed=2)
    z0, z1 = head(backbone(torch.cat([x0, x1])).flatten(1)).chunk(2)
    expected = NTXentLoss(0.5)(z0, z1)
    expected.backward()
    loss = method.training_step([x0, x1]).loss
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert_backbone_grads_match(method.backbone, backbone)


def test_the_forwards_differ_only_in_batchnorm_statistics() -> None:
    """With BatchNorm's running statistics (eval mode) both forwards give one loss; in training, where each
    normalizes with its batch's statistics, they differ, and so do the running means they leave behind."""
    joint, per_view = make_method(JOINT), make_method(PER_VIEW)
    views = images(seed=3)
    with torch.no_grad():
        assert joint.eval().training_step(views).loss.item() == pytest.approx(
            per_view.eval().training_step(views).loss.item(), abs=1e-6
        )
        train_losses = [m.train().training_step(views).loss.item() for m in (joint, per_view)]
    assert abs(train_losses[0] - train_losses[1]) > 1e-3, train_losses
    running_means = [m.backbone[1].running_mean for m in (joint, per_view)]
    assert not torch.allclose(*running_means, atol=1e-4)


def test_per_view_step_gives_the_first_views_own_features() -> None:
    assert_step_gives_first_view_features(make_method(PER_VIEW), images(seed=4), FEATURE_DIM)


def test_joint_step_gives_the_first_views_features_as_normalized_with_the_second() -> None:
    method = make_method(JOINT)
    x0, x1 = images(seed=5)
    features = method.train().training_step([x0, x1]).features
    assert not features.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(features, method.backbone(torch.cat([x0, x1]))[: len(x0)])
