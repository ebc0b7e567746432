"""LARS against the paper's update written out per tensor, and against lightly's LARS."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ssl_core.optimizers import LARS, build_optimizer, lars_param_groups, scaled_step
from ssl_core.precision import loss_scaler

LR, MOMENTUM, WEIGHT_DECAY, ETA = 0.3, 0.9, 5e-4, 0.02


def small_network(seed: int = 0) -> nn.Module:
    """Convolution and linear weights, a bias and BatchNorm parameters: every kind LARS tells apart."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )


def loss_of(network: nn.Module, step: int, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(16, 3, 8, 8, generator=generator)
    return (network(x.to(device)) - 1).pow(2).mean()


def train(network: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5, skip: int | None = None) -> None:
    """``steps`` steps of :func:`loss_of`, leaving out step ``skip`` (as if it never happened)."""
    for step in range(steps):
        if step == skip:
            continue
        optimizer.zero_grad()
        loss_of(network, step).backward()
        optimizer.step()


def reference_lars(network: nn.Module, steps: int = 5) -> None:
    """You et al. 2017, Algorithm 1, one tensor at a time: weights get weight decay and the
    trust ratio, 1-d tensors (biases, BatchNorm) plain momentum SGD."""
    buffers: dict[nn.Parameter, torch.Tensor] = {}
    for step in range(steps):
        network.zero_grad()
        loss_of(network, step).backward()
        with torch.no_grad():
            for p in network.parameters():
                update = p.grad.clone()
                if p.ndim > 1:
                    trust = ETA * p.norm() / (p.grad.norm() + WEIGHT_DECAY * p.norm() + 1e-8)
                    update = trust * (update + WEIGHT_DECAY * p)
                buffers[p] = update if p not in buffers else MOMENTUM * buffers[p] + update
                p -= LR * buffers[p]


def assert_same_parameters(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=f"{name} differs")


def test_lars_follows_the_papers_update_per_tensor():
    ours, reference = small_network(), small_network()
    train(ours, build_optimizer("lars", ours.parameters(), LR, MOMENTUM, WEIGHT_DECAY))
    reference_lars(reference)
    assert_same_parameters(ours, reference)
    # Not plain SGD: the same steps without trust ratios end elsewhere.
    sgd = small_network()
    train(sgd, build_optimizer("sgd", sgd.parameters(), LR, MOMENTUM, WEIGHT_DECAY))
    assert not torch.allclose(sgd[0].weight, ours[0].weight, atol=1e-3)


def test_lars_matches_lightlys_lars():
    lars = pytest.importorskip("lightly.utils.lars")
    ours, theirs = small_network(), small_network()
    train(ours, build_optimizer("lars", ours.parameters(), LR, MOMENTUM, WEIGHT_DECAY))
    # lightly adapts and decays exactly the groups with weight decay; ours are split the same way.
    groups = lars_param_groups(theirs.parameters(), WEIGHT_DECAY)
    train(theirs, lars.LARS(groups, lr=LR, momentum=MOMENTUM, trust_coefficient=ETA))
    assert_same_parameters(ours, theirs)


def test_biases_and_norm_parameters_are_neither_decayed_nor_adapted():
    network = small_network()
    weights, others = lars_param_groups(network.parameters(), WEIGHT_DECAY)
    assert {id(p) for p in weights["params"]} == {id(network[0].weight), id(network[4].weight)}
    assert {id(p) for p in others["params"]} == {id(network[1].weight), id(network[1].bias), id(network[4].bias)}
    assert (weights["lars"], weights["weight_decay"]) == (True, WEIGHT_DECAY)
    assert (others["lars"], others["weight_decay"]) == (False, 0.0)


def test_a_zero_weight_keeps_a_trust_ratio_of_one():
    """A layer initialized at zero must still move: with ||w|| = 0 the step is SGD's."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3, bias=False)
    nn.init.zeros_(layer.weight)
    x = torch.randn(8, 4)
    (layer(x) - 1).pow(2).mean().backward()
    gradient = layer.weight.grad.clone()
    LARS([{"params": [layer.weight], "lars": True, "weight_decay": WEIGHT_DECAY}], lr=LR).step()
    torch.testing.assert_close(layer.weight.detach(), -LR * gradient)


def test_weight_decay_setting_survives_the_step_and_the_state_dict():
    """The step folds weight decay into the gradients and hides it from SGD for a moment; the
    groups keep their settings, and a resumed optimizer continues exactly."""
    network = small_network()
    optimizer = build_optimizer("lars", network.parameters(), LR, MOMENTUM, WEIGHT_DECAY)
    train(network, optimizer, steps=2)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [WEIGHT_DECAY, 0.0]

    resumed_network = copy.deepcopy(network)
    resumed = build_optimizer("lars", resumed_network.parameters(), LR, MOMENTUM, WEIGHT_DECAY)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for net, opt in ((network, optimizer), (resumed_network, resumed)):
        opt.zero_grad()
        loss_of(net, 9).backward()
        opt.step()
    assert_same_parameters(network, resumed_network, atol=0)


def test_unknown_optimizer_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="optimizer = 'adam': must be one of 'sgd', 'lars'"):
        build_optimizer("adam", small_network().parameters(), LR, MOMENTUM, WEIGHT_DECAY)


def test_negative_trust_coefficient_is_refused():
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(small_network().parameters(), trust_coefficient=-1.0, lr=LR)


def scaled_training(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: str,
    overflow_at: int | None = None,
    device: torch.device = torch.device("cpu"),
) -> list[float]:
    """:func:`train`'s steps as the engine takes them, through :func:`scaled_step` and ``precision``'s scaler
    (the arithmetic in fp32: the scaler is tested, not fp16's rounding); step ``overflow_at``'s loss is made
    infinite, as an fp16 overflow makes the gradients. Returns the loss scale after each step."""
    scaler = loss_scaler(device, precision)
    scales = []
    for step in range(5):
        optimizer.zero_grad()
        loss = loss_of(network, step, device) * (math.inf if step == overflow_at else 1.0)
        scaler.scale(loss).backward()
        scaled_step(optimizer, scaler, clip_norm=None)
        scales.append(scaler.get_scale())
    return scales


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_a_step_from_scaled_gradients_is_the_step_from_the_true_ones(name: str, fused: bool) -> None:
    """fp16-mixed's backward yields the gradients times the loss scale (65,536); the update must be the true
    gradients'. LARS reads their norm for its trust ratios, and a fused optimizer would only unscale them inside
    its own kernel, after LARS had read them."""
    plain, scaled = small_network(), small_network()
    train(plain, build_optimizer(name, plain.parameters(), LR, MOMENTUM, WEIGHT_DECAY, fused=fused or None))
    optimizer = build_optimizer(name, scaled.parameters(), LR, MOMENTUM, WEIGHT_DECAY, fused=fused or None)
    assert scaled_training(scaled, optimizer, "fp16-mixed") == [65536.0] * 5
    assert_same_parameters(scaled, plain)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_a_step_whose_gradients_overflowed_leaves_no_trace(name: str, fused: bool) -> None:
    """The scaler skips it and halves the scale; the other steps are those of a run without it. The first step
    too, the usual one to overflow (at the initial scale): fused SGD would go on from uninitialized momentum
    buffers without :func:`zero_momentum_buffers_`."""
    for overflow_at in (0, 2):
        with_overflow, without = small_network(), small_network()
        optimizer = build_optimizer(name, with_overflow.parameters(), LR, MOMENTUM, WEIGHT_DECAY, fused=fused or None)
        scales = scaled_training(with_overflow, optimizer, "fp16-mixed", overflow_at)
        assert scales[overflow_at] == 32768.0 and scales[-1] == 32768.0
        reference = build_optimizer(name, without.parameters(), LR, MOMENTUM, WEIGHT_DECAY, fused=fused or None)
        train(without, reference, skip=overflow_at)
        assert_same_parameters(with_overflow, without)


def test_fused_momentum_buffers_exist_and_are_zero_before_the_first_step() -> None:
    network = small_network()
    optimizer = build_optimizer("lars", network.parameters(), LR, MOMENTUM, WEIGHT_DECAY, fused=True)
    buffers = [optimizer.state[p]["momentum_buffer"] for p in network.parameters()]
    assert len(buffers) == 5 and all(not b.any() for b in buffers)  # conv weight, BatchNorm's two, linear's two


def test_a_disabled_scaler_steps_exactly_as_the_optimizer_alone() -> None:
    """fp32 and bf16 go through the same :func:`scaled_step`, bit for bit as before it."""
    plain, scaled = small_network(), small_network()
    train(plain, build_optimizer("sgd", plain.parameters(), LR, MOMENTUM, WEIGHT_DECAY))
    scaled_training(scaled, build_optimizer("sgd", scaled.parameters(), LR, MOMENTUM, WEIGHT_DECAY), "fp32")
    assert_same_parameters(scaled, plain, atol=0.0)
