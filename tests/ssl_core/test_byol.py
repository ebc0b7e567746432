"""NormalizedMSELoss against BYOL's eq. 2 written out and against lightly; BYOL's bookkeeping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_core.augment import MultiView, Normalization, ViewConfig, view_transform
from ssl_core.data import ManifestDataset
from ssl_core.engine import TrainConfig, train
from ssl_core.losses.byol import NormalizedMSELoss
from ssl_core.methods.byol import BYOL, BYOLConfig
from ssl_core.momentum import cosine_momentum
from tests.ssl_core.tiny import assert_momentum_network_is_cut_off, assert_only_the_online_network_learns, tiny_backbone

FEATURE_DIM, PROJECTION_DIM = 16, 8


def reference_normalized_mse(p: torch.Tensor, z: torch.Tensor) -> float:
    """BYOL eq. 2: mean over the batch of sum_j (p_j / ||p|| - z_j / ||z||)^2."""
    total = 0.0
    for p_row, z_row in zip(p.double().tolist(), z.double().tolist(), strict=True):
        p_norm = math.sqrt(sum(v * v for v in p_row))
        z_norm = math.sqrt(sum(v * v for v in z_row))
        total += sum((a / p_norm - b / z_norm) ** 2 for a, b in zip(p_row, z_row, strict=True))
    return total / p.shape[0]


def make_method(seed: int = 0, **config) -> BYOL:
    torch.manual_seed(seed)
    config = {"projection_hidden_dim": 32, "projection_dim": PROJECTION_DIM, "prediction_hidden_dim": 32, **config}
    return BYOL(tiny_backbone(), FEATURE_DIM, BYOLConfig(**config))


def target_parameters(method: BYOL) -> list[nn.Parameter]:
    return [*method.target_backbone.parameters(), *method.target_projection_head.parameters()]


def online_counterparts(method: BYOL) -> list[nn.Parameter]:
    return [*method.backbone.parameters(), *method.projection_head.parameters()]


def images(batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]


# --- the loss -------------------------------------------------------------------------------


def test_loss_matches_paper_equation():
    generator = torch.Generator().manual_seed(0)
    p, z = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    assert NormalizedMSELoss()(p, z).item() == pytest.approx(reference_normalized_mse(p, z), abs=1e-5)


def test_loss_matches_lightly_negative_cosine_similarity():
    lightly_loss = pytest.importorskip("lightly.loss")
    generator = torch.Generator().manual_seed(1)
    p0, p1, z0, z1 = (torch.randn(16, 32, generator=generator) for _ in range(4))
    negative_cosine = lightly_loss.NegativeCosineSimilarity()
    # ||p - z||^2 of unit vectors = 2 - 2 cos = 2 + 2 * (negative cosine).
    assert NormalizedMSELoss()(p0, z1).item() == pytest.approx(2 + 2 * negative_cosine(p0, z1).item(), abs=1e-5)
    # BYOL's symmetrized loss, as lightly's benchmark writes it.
    ours = 0.5 * (NormalizedMSELoss()(p0, z1) + NormalizedMSELoss()(p1, z0))
    theirs = 0.5 * (negative_cosine(p0, z1) + negative_cosine(p1, z0))
    assert ours.item() == pytest.approx(2 + 2 * theirs.item(), abs=1e-5)


def test_loss_closed_form_values():
    p = torch.randn(5, 8)
    loss = NormalizedMSELoss()
    assert loss(p, 3.0 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 5.0], [-1.0, 0.0]])
    assert loss(*orthogonal).item() == pytest.approx(2.0, abs=1e-6)


def test_loss_is_symmetric_and_reaches_both_inputs():
    p, z = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    loss = NormalizedMSELoss()
    torch.testing.assert_close(loss(p, z), loss(z, p))
    loss(p, z).backward()
    # The loss stops nothing: the method detaches the target.
    assert p.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


def test_loss_stays_fp32_under_bf16_autocast():
    p = torch.randn(8, 16)
    z = (p + 0.05 * torch.randn(8, 16)).bfloat16()  # nearly aligned: 2 - 2 cos is small
    p = p.bfloat16()
    expected = NormalizedMSELoss()(p.float(), z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NormalizedMSELoss()(p, z)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("base_momentum", [-0.1, 1.01])
def test_bad_momentum_raises(base_momentum):
    # The recipe checks its values, so a bad one fails before any network is built.
    with pytest.raises(ValueError, match=rf"^base_momentum = {base_momentum}: must be in \[0, 1\]"):
        BYOLConfig(base_momentum=base_momentum)


@pytest.mark.parametrize("field", ["projection_hidden_dim", "projection_dim", "prediction_hidden_dim"])
def test_non_positive_head_size_raises(field):
    with pytest.raises(ValueError, match=rf"^{field} = 0: must be > 0"):
        BYOLConfig(**{field: 0})


def test_heads_are_lightly_byol_heads():
    heads = pytest.importorskip("lightly.models.modules.heads")
    method = make_method()
    for ours, reference, input_dim in [
        (method.projection_head, heads.BYOLProjectionHead(FEATURE_DIM, 32, PROJECTION_DIM), FEATURE_DIM),
        (method.prediction_head, heads.BYOLPredictionHead(PROJECTION_DIM, 32, PROJECTION_DIM), PROJECTION_DIM),
    ]:
        reference.layers.load_state_dict(ours.state_dict())
        x = torch.randn(4, input_dim)
        torch.testing.assert_close(ours(x), reference(x))


def test_default_heads_are_the_papers():
    method = BYOL(tiny_backbone(), FEATURE_DIM)
    assert method.projection_head[0].out_features == 4096 and method.projection_head[-1].out_features == 256
    assert method.prediction_head[0].in_features == 256 and method.prediction_head[-1].out_features == 256


def test_target_starts_as_a_copy_and_is_frozen():
    method = make_method()
    for p_target, p_online in zip(target_parameters(method), online_counterparts(method), strict=True):
        assert torch.equal(p_target, p_online) and p_target is not p_online
        assert not p_target.requires_grad
    trainable = {id(p) for p in method.trainable_parameters()}
    expected = [*online_counterparts(method), *method.prediction_head.parameters()]
    assert trainable == {id(p) for p in expected}
    assert method.frozen_prefixes == ()


# --- gradients and EMA ----------------------------------------------------------------------


def test_gradients_reach_the_online_network_only():
    method = make_method().train()
    assert_only_the_online_network_learns(method, target_parameters(method), images(), FEATURE_DIM)


def test_targets_are_cut_off_even_if_the_target_required_grad():
    method = make_method().train()
    assert_momentum_network_is_cut_off(method, target_parameters(method), images())


def test_momentum_follows_the_cosine_schedule():
    method = make_method()
    total = 100
    values = []
    for step in range(total + 1):
        method.before_step(step, total)
        values.append(method.momentum)
        assert method.momentum == cosine_momentum(step, total, 0.99)
    assert values[0] == pytest.approx(0.99, abs=1e-12)
    assert values[total // 2] == pytest.approx(0.995, abs=1e-12)
    assert values[-1] == pytest.approx(1.0, abs=1e-12)
    assert values == sorted(values)


def test_ema_update_after_optimizer_step():
    method = make_method(base_momentum=0.5)
    method.before_step(0, 10)
    assert method.momentum == 0.5  # halving is exact in floating point
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn_like(p))  # stands in for an optimizer step
    online = [p.clone() for p in online_counterparts(method)]
    old_targets = [p.clone() for p in target_parameters(method)]
    prediction_before = [p.clone() for p in method.prediction_head.parameters()]
    method.after_optimizer_step()
    for new, old, p_online in zip(target_parameters(method), old_targets, online, strict=True):
        assert torch.equal(new, 0.5 * old + 0.5 * p_online)
    # The predictor has no target counterpart and is left alone.
    assert all(torch.equal(a, b) for a, b in zip(method.prediction_head.parameters(), prediction_before, strict=True))


def test_ema_update_uses_the_scheduled_momentum():
    method = make_method()
    method.before_step(30, 100)
    m = cosine_momentum(30, 100, 0.99)
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in online_counterparts(method)]
    old_targets = [p.clone() for p in target_parameters(method)]
    method.after_optimizer_step()
    for new, old, p_online in zip(target_parameters(method), old_targets, online, strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * p_online, rtol=0, atol=1e-6)


def test_final_momentum_freezes_the_target():
    method = make_method()
    method.before_step(10, 10)
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(1.0)
    old_targets = [p.clone() for p in target_parameters(method)]
    method.after_optimizer_step()
    assert all(torch.equal(a, b) for a, b in zip(target_parameters(method), old_targets, strict=True))


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip_includes_the_target_network():
    method = make_method(seed=0).train()
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn_like(p))
    method.after_optimizer_step()  # the target now differs from a fresh copy
    method.training_step(images())  # and its BatchNorm statistics moved
    state = method.checkpoint_state()
    assert any(k.startswith("target_backbone.") for k in state)
    assert any(k.startswith("target_projection_head.") for k in state)

    fresh = make_method(seed=1)
    assert not torch.equal(fresh.target_backbone[0].weight, method.target_backbone[0].weight)
    fresh.load_checkpoint_state(state)
    assert fresh.state_dict().keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key


# --- training -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(cifar_folder: Path) -> ManifestDataset:
    view = view_transform(ViewConfig(32), Normalization())
    return ManifestDataset(cifar_folder, splits=["train"], transform=MultiView([view, view]))


def test_engine_trains_with_finite_losses(dataset, tmp_path):
    method = make_method()
    target_before = [p.clone() for p in target_parameters(method)]
    config = TrainConfig(epochs=1, batch_size=16, lr=0.06, seed=3, device="cpu", precision="fp32")
    history = train(method, dataset, config, tmp_path)
    assert len(history.epochs) == 1 and 0 <= history.epochs[0].loss <= 4
    # 64 images / 16 = 4 steps: the engine drove the schedule up to its last step.
    assert method.momentum == cosine_momentum(3, 4, 0.99)
    assert all(not torch.equal(a, b) for a, b in zip(target_parameters(method), target_before, strict=True))
    assert all(p.grad is None for p in target_parameters(method))
