"""BarlowTwinsLoss against eq. 1 written out and lightly, its invariants; the BarlowTwins method."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_core.losses.barlow_twins import BarlowTwinsLoss
from ssl_core.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from tests.ssl_core.tiny import (
    assert_checkpoint_round_trips,
    assert_step_gives_first_view_features,
    assert_step_matches_a_reference_projector,
    tiny_backbone,
    train_two_epochs_on_real_images,
)

FEATURE_DIM = 16
TINY = BarlowTwinsConfig(projection_hidden_dim=32, projection_dim=24)


# These tensors are too small to gain from a second thread (see the fixture).
pytestmark = pytest.mark.usefixtures("single_thread")


def reference_barlow_twins(z0: torch.Tensor, z1: torch.Tensor, lambda_: float) -> float:
    """Eq. 1 element by element: C_ij = sum_b z0n[b, i] z1n[b, j] / n over batch-standardized columns.

    Standardized as BatchNorm (and the official code, and lightly) do: biased variance, eps 1e-5.
    """
    n, d = z0.shape

    def standardized_columns(z: torch.Tensor) -> list[list[float]]:
        columns = []
        for column in z.T.tolist():
            mean = sum(column) / n
            variance = sum((x - mean) ** 2 for x in column) / n
            columns.append([(x - mean) / math.sqrt(variance + 1e-5) for x in column])
        return columns

    a, b = standardized_columns(z0), standardized_columns(z1)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1.0 - c_ij) ** 2 if i == j else lambda_ * c_ij**2
    return loss


def whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) data with zero mean and identity (biased) covariance: decorrelated, unit-variance columns."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(dim=0)
    covariance = z.T @ z / n  # (d, d)
    return (z @ torch.linalg.inv(torch.linalg.cholesky(covariance)).T).float()


def make_method(seed: int = 0, config: BarlowTwinsConfig = TINY) -> BarlowTwins:
    torch.manual_seed(seed)
    return BarlowTwins(tiny_backbone(), FEATURE_DIM, config)


def images(seed: int = 0, batch: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]


# --- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("lambda_", [0.0, 5e-3, 0.5])
def test_loss_matches_paper_equation(lambda_):
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 6, generator=generator), torch.randn(8, 6, generator=generator)
    loss = BarlowTwinsLoss(lambda_)(z0, z1)
    assert loss.item() == pytest.approx(reference_barlow_twins(z0, z1, lambda_), abs=1e-5)


@pytest.mark.parametrize("lambda_", [5e-3, 0.1])
def test_loss_matches_lightly(lambda_):
    lightly_loss = pytest.importorskip("lightly.loss")
    generator = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(16, 32, generator=generator), torch.randn(16, 32, generator=generator)
    z1 = z1 + z0  # correlated views, so that both terms matter
    expected = lightly_loss.BarlowTwinsLoss(lambda_param=lambda_, gather_distributed=False)(z0, z1)
    assert BarlowTwinsLoss(lambda_)(z0, z1).item() == pytest.approx(expected.item(), abs=1e-5)


def test_identical_whitened_embeddings_are_the_minimum():
    """z0 = z1 with decorrelated unit-variance columns gives C = I (up to eps), so loss ~ 0."""
    z = whitened(64, 8, seed=2)
    loss = BarlowTwinsLoss()
    assert loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(z, torch.randn(64, 8)).item() > 1.0


def test_opposite_whitened_embeddings_give_four_per_dimension():
    """z1 = -z0 makes C = -I: each diagonal term is (1 - (-1))^2 = 4."""
    z = whitened(64, 8, seed=3)
    assert BarlowTwinsLoss()(z, -z).item() == pytest.approx(4.0 * 8, abs=1e-3)


def test_redundant_dimensions_are_penalized_by_lambda():
    """Two copies of one column in both views: C_01 = C_10 = 1, two off-diagonal terms of lambda each."""
    z = whitened(64, 4, seed=4)
    z[:, 1] = z[:, 0]
    assert BarlowTwinsLoss(lambda_=0.25)(z, z.clone()).item() == pytest.approx(2 * 0.25, abs=1e-3)


def test_loss_is_symmetric_in_the_two_views():
    torch.manual_seed(5)
    z0, z1 = torch.randn(16, 12), torch.randn(16, 12)
    loss = BarlowTwinsLoss()
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


def test_loss_is_invariant_to_per_dimension_shift_and_scale():
    torch.manual_seed(6)
    z0, z1 = torch.randn(16, 12), torch.randn(16, 12)
    scale, shift = torch.rand(12) + 0.5, torch.randn(12)
    loss = BarlowTwinsLoss()
    torch.testing.assert_close(loss(z0, z1), loss(z0 * scale + shift, z1), atol=1e-4, rtol=1e-5)


def test_loss_ignores_bf16_autocast():
    torch.manual_seed(7)
    z0, z1 = torch.randn(32, 64), torch.randn(32, 64)
    expected = BarlowTwinsLoss()(z0, z1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = BarlowTwinsLoss()(z0, z1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


def test_gradient_reaches_both_views():
    z0, z1 = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    BarlowTwinsLoss()(z0, z1).backward()
    assert z0.grad.abs().sum() > 0 and z1.grad.abs().sum() > 0


def test_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="lambda_"):
        BarlowTwinsLoss(lambda_=-1.0)
    with pytest.raises(ValueError, match="same"):
        BarlowTwinsLoss()(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="n >= 2"):
        BarlowTwinsLoss()(torch.randn(1, 8), torch.randn(1, 8))


# --- the method -----------------------------------------------------------------------------


def test_default_projector_follows_the_lightly_cifar10_benchmark():
    """2 layers, 512-2048-2048: Linear-BN-ReLU, then a plain Linear; lambda 5e-3."""
    method = BarlowTwins(nn.Identity(), 512)
    projector = method.projection_head
    assert [type(m) for m in projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (projector[0].in_features, projector[0].out_features, projector[3].out_features) == (512, 2048, 2048)
    assert projector[0].bias is None and projector[3].bias is not None
    assert method.criterion.lambda_ == 5e-3


@pytest.mark.parametrize(
    ("field", "value"),
    [("lambda_", 0.0), ("projection_hidden_dim", 0), ("projection_dim", -1), ("projection_layers", 0)],
)
def test_recipe_rejects_non_positive_values(field, value):
    with pytest.raises(ValueError, match=rf"^{field} = {value}: must be > 0"):
        BarlowTwinsConfig(**{field: value})


def test_training_step_matches_lightly_projection_head_loss_and_gradients():
    """Our 3-layer step against lightly's BarlowTwinsProjectionHead + BarlowTwinsLoss on a copy of the network."""
    lightly_loss = pytest.importorskip("lightly.loss")
    heads = pytest.importorskip("lightly.models.modules.heads")
    method = make_method(config=BarlowTwinsConfig(projection_hidden_dim=32, projection_dim=24, projection_layers=3))
    assert_step_matches_a_reference_projector(
        method,
        heads.BarlowTwinsProjectionHead(FEATURE_DIM, 32, 24),
        lightly_loss.BarlowTwinsLoss(lambda_param=5e-3),
        images(seed=8),
        abs_tolerance=1e-5,
    )


def test_training_step_gives_finite_loss_and_first_view_features():
    output = assert_step_gives_first_view_features(make_method(), images(seed=9), FEATURE_DIM)
    assert output.loss.item() >= 0


def test_checkpoint_state_round_trips():
    state = assert_checkpoint_round_trips(make_method(seed=0), make_method(seed=1), images(seed=10), images(seed=11))
    assert any(k.startswith("projection_head.") for k in state)


def test_engine_trains_on_real_images_without_collapse(cifar_folder: Path, tmp_path: Path):
    history = train_two_epochs_on_real_images(make_method(), cifar_folder, tmp_path / "ckpt")
    assert all(math.isfinite(e.loss) and e.loss > 0 for e in history.epochs)
