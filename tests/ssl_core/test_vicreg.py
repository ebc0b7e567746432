"""The VICReg method against lightly's head and loss, its recipe, and its gradient scale.

The loss itself is tested in ``test_vicreg_loss.py``; that VICReg learns in a short
CPU run, in ``test_methods_learn.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_core.backbones import build_backbone
from ssl_core.methods.factory import build_method
from ssl_core.methods.vicreg import VICReg, VICRegConfig
from tests.ssl_core.tiny import (
    assert_checkpoint_round_trips,
    assert_step_gives_first_view_features,
    assert_step_matches_a_reference_projector,
    tiny_backbone,
    train_two_epochs_on_real_images,
)

FEATURE_DIM = 16
TINY = VICRegConfig(projection_hidden_dim=32, projection_dim=24)


# These tensors are too small to gain from a second thread (see the fixture).
pytestmark = pytest.mark.usefixtures("single_thread")


def make_method(seed: int = 0, config: VICRegConfig = TINY) -> VICReg:
    torch.manual_seed(seed)
    return VICReg(tiny_backbone(), FEATURE_DIM, config)


def images(seed: int = 0, batch: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]


def test_default_expander_is_three_layers_with_the_papers_loss_weights():
    """Linear-BN-ReLU twice, then a plain Linear (sec. 4.1); 512-2048-2048-2048 for a ResNet-18; 25 / 25 / 1."""
    method = VICReg(nn.Identity(), 512)
    expander = method.projection_head
    assert [type(m) for m in expander] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert [m.out_features for m in expander if isinstance(m, nn.Linear)] == [2048, 2048, 2048]
    loss = method.criterion
    assert (loss.lambda_, loss.mu, loss.nu) == (25.0, 25.0, 1.0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lambda_", -1.0, "must be >= 0"),
        ("mu", -0.5, "must be >= 0"),
        ("nu", -1.0, "must be >= 0"),
        ("projection_hidden_dim", 0, "must be > 0"),
        ("projection_layers", 0, "must be > 0"),
    ],
)
def test_recipe_rejects_bad_values_naming_them(field, value, message):
    with pytest.raises(ValueError, match=rf"^{field} = {value}: {message}"):
        VICRegConfig(**{field: value})


def test_training_step_matches_lightly_projection_head_loss_and_gradients():
    """Our step against lightly's VICRegProjectionHead + VICRegLoss on a copy of the network."""
    lightly_loss = pytest.importorskip("lightly.loss")
    heads = pytest.importorskip("lightly.models.modules.heads")
    assert_step_matches_a_reference_projector(
        make_method(),
        heads.VICRegProjectionHead(FEATURE_DIM, 32, 24, num_layers=3),
        lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0),
        images(seed=3),
        abs_tolerance=1e-4,
    )


def test_training_step_gives_finite_loss_and_first_view_features():
    output = assert_step_gives_first_view_features(make_method(), images(seed=4), FEATURE_DIM)
    assert output.loss.item() > 0


def first_gradient_norm(name: str) -> float:
    """Global gradient norm of one step at initialization, the recipe's heads on a CIFAR ResNet-18."""
    torch.manual_seed(0)
    method = build_method(name, build_backbone("resnet18_cifar")).train()
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(32, 3, 32, 32, generator=generator) for _ in range(2)]
    method.training_step(views).loss.backward()
    return math.sqrt(sum(p.grad.pow(2).sum().item() for p in method.trainable_parameters() if p.grad is not None))


def test_first_gradient_is_on_simclrs_scale_unlike_barlow_twins():
    """What the docstring of VICRegConfig claims: VICReg's first step is within 10x of
    SimCLR's, while Barlow Twins' is 100x and more (why it still needs a small SGD lr
    is its lack of scale invariance, also explained there)."""
    simclr, vicreg, barlow = (first_gradient_norm(name) for name in ("simclr", "vicreg", "barlowtwins"))
    print(f"first gradient norms: simclr {simclr:.3g}, vicreg {vicreg:.3g}, barlowtwins {barlow:.3g}")
    assert vicreg < 10 * simclr
    assert barlow > 100 * simclr


def test_checkpoint_state_round_trips():
    state = assert_checkpoint_round_trips(make_method(seed=0), make_method(seed=1), images(seed=5), images(seed=6))
    assert any(k.startswith("projection_head.") for k in state)


def test_engine_trains_on_real_images_without_collapse(cifar_folder: Path, tmp_path: Path):
    history = train_two_epochs_on_real_images(make_method(), cifar_folder, tmp_path / "ckpt")
    assert all(math.isfinite(e.loss) and e.loss > 0 for e in history.epochs)
