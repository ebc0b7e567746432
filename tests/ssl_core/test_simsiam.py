"""NegativeCosineSimilarity against eq. 1 written out and lightly; SimSiam's heads, stop-gradient and training."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.methods.simsiam import SimSiam, SimSiamConfig
from tests.ssl_core.tiny import (
    assert_backbone_grads_match,
    assert_checkpoint_round_trips,
    assert_step_gives_first_view_features,
    tiny_backbone,
    train_two_epochs_on_real_images,
)

FEATURE_DIM = 16
TINY = SimSiamConfig(projection_hidden_dim=32, projection_dim=24, prediction_hidden_dim=8)


# These tensors are too small to gain from a second thread (see the fixture).
pytestmark = pytest.mark.usefixtures("single_thread")


def reference_negative_cosine(p: torch.Tensor, z: torch.Tensor) -> float:
    """SimSiam eq. 1, D(p, z) = -(p / ||p||) . (z / ||z||), averaged over the rows, element by element."""
    total = 0.0
    for p_row, z_row in zip(p.tolist(), z.tolist(), strict=True):
        dot = sum(a * b for a, b in zip(p_row, z_row, strict=True))
        norm_p = math.sqrt(sum(a * a for a in p_row))
        norm_z = math.sqrt(sum(b * b for b in z_row))
        total += -dot / (norm_p * norm_z)
    return total / len(p)


def make_method(seed: int = 0, config: SimSiamConfig = TINY) -> SimSiam:
    torch.manual_seed(seed)
    return SimSiam(tiny_backbone(), FEATURE_DIM, config)


def images(seed: int = 0, batch: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]


# --- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(1, 3), (6, 8), (10, 32)])
def test_loss_matches_paper_equation(n, d):
    generator = torch.Generator().manual_seed(n)
    p, z = torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)
    assert NegativeCosineSimilarity()(p, z).item() == pytest.approx(reference_negative_cosine(p, z), abs=1e-5)


def test_loss_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    generator = torch.Generator().manual_seed(1)
    p, z = torch.randn(16, 32, generator=generator), torch.randn(16, 32, generator=generator)
    expected = lightly_loss.NegativeCosineSimilarity()(p, z)  # dim=1, eps=1e-8 by default
    assert NegativeCosineSimilarity()(p, z).item() == pytest.approx(expected.item(), abs=1e-5)


def test_identical_inputs_give_minus_one_and_opposite_ones_plus_one():
    z = torch.randn(8, 16)
    loss = NegativeCosineSimilarity()
    assert loss(z, z.clone()).item() == pytest.approx(-1.0, abs=1e-6)
    assert loss(z, -z).item() == pytest.approx(1.0, abs=1e-6)


def test_loss_is_symmetric_scale_invariant_and_bounded():
    torch.manual_seed(2)
    p, z = torch.randn(8, 16), torch.randn(8, 16)
    loss = NegativeCosineSimilarity()
    torch.testing.assert_close(loss(p, z), loss(z, p))
    torch.testing.assert_close(loss(p, z), loss(5.0 * p, 0.01 * z))
    assert -1.0 <= loss(p, z).item() <= 1.0


def test_loss_rejects_mismatched_shapes_and_bad_eps():
    with pytest.raises(ValueError, match="same"):
        NegativeCosineSimilarity()(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="eps"):
        NegativeCosineSimilarity(eps=0.0)


# --- the heads ------------------------------------------------------------------------------


def test_default_heads_follow_the_lightly_cifar10_benchmark():
    """2-layer projection 512-2048-2048 with BN on the output; predictor 2048-512-2048."""
    method = SimSiam(nn.Identity(), 512)
    projection, prediction = method.projection_head, method.prediction_head
    assert [type(m) for m in projection] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert (projection[0].in_features, projection[0].out_features, projection[3].out_features) == (512, 2048, 2048)
    assert projection[3].bias is None and not projection[4].affine  # BN cancels a bias; no affine, as the official code
    assert [type(m) for m in prediction] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (prediction[0].in_features, prediction[0].out_features, prediction[3].out_features) == (2048, 512, 2048)


def test_heads_compute_what_lightly_heads_compute():
    """With lightly's weights loaded, our 3-layer projection and our predictor give lightly's outputs."""
    heads = pytest.importorskip("lightly.models.modules.heads")
    torch.manual_seed(3)
    ours = SimSiam(
        nn.Identity(),
        12,
        SimSiamConfig(projection_hidden_dim=20, projection_dim=16, projection_layers=3, prediction_hidden_dim=6),
    )
    theirs = [heads.SimSiamProjectionHead(12, 20, 16), heads.SimSiamPredictionHead(16, 6, 16)]
    for head, reference in zip([ours.projection_head, ours.prediction_head], theirs, strict=True):
        head.load_state_dict({k.removeprefix("layers."): v for k, v in reference.state_dict().items()})
        x = torch.randn(10, head[0].in_features)
        torch.testing.assert_close(head(x), reference(x))


def test_training_step_matches_lightly_loss_and_gradients():
    """Our step against lightly's recipe (its heads and loss, z.detach(), 0.5 * sum) on a copy of the network."""
    lightly_loss = pytest.importorskip("lightly.loss")
    heads = pytest.importorskip("lightly.models.modules.heads")
    method = make_method(
        config=SimSiamConfig(projection_hidden_dim=32, projection_dim=24, projection_layers=3, prediction_hidden_dim=8)
    )
    backbone = copy.deepcopy(method.backbone)
    projection = heads.SimSiamProjectionHead(FEATURE_DIM, 32, 24)
    prediction = heads.SimSiamPredictionHead(24, 8, 24)
    projection.load_state_dict({f"layers.{k}": v for k, v in method.projection_head.state_dict().items()})
    prediction.load_state_dict({f"layers.{k}": v for k, v in method.prediction_head.state_dict().items()})
    criterion = lightly_loss.NegativeCosineSimilarity()

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # lightly's SimSiamModel.forward
        z = projection(backbone(x).flatten(start_dim=1))
        return z.detach(), prediction(z)

    x0, x1 = images(seed=4)
    (z0, p0), (z1, p1) = forward(x0), forward(x1)
    expected = 0.5 * (criterion(z0, p1) + criterion(z1, p0))
    expected.backward()
    loss = method.training_step([x0, x1]).loss
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert_backbone_grads_match(method.backbone, backbone)


@pytest.mark.parametrize(
    "field", ["projection_hidden_dim", "projection_dim", "projection_layers", "prediction_hidden_dim"]
)
def test_recipe_rejects_non_positive_sizes(field):
    with pytest.raises(ValueError, match=rf"^{field} = 0: must be > 0"):
        SimSiamConfig(**{field: 0})


# --- stop-gradient --------------------------------------------------------------------------


def test_gradient_reaches_z_only_through_the_predictor():
    """The gradient at z0 is that of 0.5 * D(h(z0), z1) with z1 constant: nothing comes from D(p1, z0)."""
    method = make_method()
    projections: list[torch.Tensor] = []
    gradients: dict[int, torch.Tensor] = {}

    def keep_projection(module, inputs, z):
        index = len(projections)
        projections.append(z)
        z.register_hook(lambda grad: gradients.__setitem__(index, grad))

    method.projection_head.register_forward_hook(keep_projection)
    method.training_step(images(seed=5)).loss.backward()
    z0, z1 = (z.detach() for z in projections)

    def gradient_at_z0(stop_gradient: bool) -> torch.Tensor:
        a, b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
        d = NegativeCosineSimilarity()
        p0, p1 = method.prediction_head(a), method.prediction_head(b)
        if stop_gradient:
            loss = 0.5 * (d(p0, b.detach()) + d(p1, a.detach()))
        else:
            loss = 0.5 * (d(p0, b) + d(p1, a))
        (grad,) = torch.autograd.grad(loss, a)
        return grad

    torch.testing.assert_close(gradients[0], gradient_at_z0(stop_gradient=True), atol=1e-7, rtol=1e-5)
    # Without the detach the symmetric term adds its own gradient: the stop-gradient is doing something.
    assert not torch.allclose(gradients[0], gradient_at_z0(stop_gradient=False), atol=1e-6)


# --- the method -----------------------------------------------------------------------------


def test_training_step_gives_finite_loss_and_first_view_features():
    output = assert_step_gives_first_view_features(make_method(), images(seed=6), FEATURE_DIM)
    assert -1.0 <= output.loss.item() <= 1.0


def test_checkpoint_state_round_trips():
    state = assert_checkpoint_round_trips(make_method(seed=0), make_method(seed=1), images(seed=7), images(seed=8))
    assert any(k.startswith("projection_head.") for k in state) and any(k.startswith("prediction_head.") for k in state)


def test_load_checkpoint_state_rejects_missing_predictor_keys():
    state = make_method().checkpoint_state()
    del state["prediction_head.0.weight"]
    with pytest.raises(RuntimeError, match="prediction_head.0.weight"):
        make_method().load_checkpoint_state(state)


def test_engine_trains_on_real_images_without_collapse(cifar_folder: Path, tmp_path: Path):
    history = train_two_epochs_on_real_images(make_method(), cifar_folder, tmp_path / "ckpt")
    assert all(math.isfinite(e.loss) and -1.0 <= e.loss <= 1.0 for e in history.epochs)
