"""InfoNCELoss against MoCo's Algorithm 1 written out and against lightly; MoCo's bookkeeping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.augment import MultiView, Normalization, ViewConfig, view_transform
from ssl_core.data import ManifestDataset
from ssl_core.engine import TrainConfig, train
from ssl_core.losses.info_nce import InfoNCELoss
from ssl_core.methods.moco import MoCo, MoCoConfig
from tests.ssl_core.tiny import assert_momentum_network_is_cut_off, assert_only_the_online_network_learns, tiny_backbone

FEATURE_DIM, PROJECTION_DIM, BANK_SIZE = 16, 8, 32


def reference_info_nce(query, key, bank, temperature):
    """MoCo eq. 1: mean over queries of -log(exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.k_j/t)))."""

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v.double() / v.double().norm()

    total = 0.0
    for q, k in zip(query, key, strict=True):
        positive = math.exp(float(unit(q) @ unit(k)) / temperature)
        negatives = sum(math.exp(float(unit(q) @ unit(n)) / temperature) for n in bank)
        total += -math.log(positive / (positive + negatives))
    return total / query.shape[0]


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def make_method(seed: int = 0, **config) -> MoCo:
    torch.manual_seed(seed)
    config = {"memory_bank_size": BANK_SIZE, "projection_hidden_dim": 32, "projection_dim": PROJECTION_DIM, **config}
    return MoCo(tiny_backbone(), FEATURE_DIM, MoCoConfig(**config))


def key_parameters(method: MoCo) -> list[nn.Parameter]:
    return [*method.key_backbone.parameters(), *method.key_projection_head.parameters()]


def images(batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]


# --- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_loss_matches_paper_algorithm(temperature):
    generator = torch.Generator().manual_seed(0)
    query, key, bank = (torch.randn(n, 8, generator=generator) for n in (6, 6, 20))
    loss = InfoNCELoss(temperature)(query, key, bank)
    assert loss.item() == pytest.approx(reference_info_nce(query, key, bank, temperature), abs=1e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.2])
def test_loss_matches_lightly_with_the_same_bank(temperature):
    lightly_loss = pytest.importorskip("lightly.loss")
    generator = torch.Generator().manual_seed(1)
    query, key = torch.randn(16, 32, generator=generator), torch.randn(16, 32, generator=generator)
    bank = F.normalize(torch.randn(64, 32, generator=generator), dim=1)  # lightly keeps its bank unit-norm
    reference = lightly_loss.NTXentLoss(temperature=temperature, memory_bank_size=(64, 32))
    # lightly's bank is a (K, d) buffer that it hands out transposed to (d, K).
    reference.memory_bank.bank = bank.clone()
    # Inputs without grad: lightly then leaves its bank alone (update=out0.requires_grad).
    expected = reference(query, key)
    assert torch.equal(reference.memory_bank.bank, bank)
    assert InfoNCELoss(temperature)(query, key, bank).item() == pytest.approx(expected.item(), abs=1e-5)


def test_loss_is_invariant_to_input_scale():
    query, key, bank = torch.randn(5, 8), torch.randn(5, 8), torch.randn(12, 8)
    loss = InfoNCELoss(0.1)
    torch.testing.assert_close(loss(query, key, bank), loss(4.0 * query, 0.1 * key, 7.0 * bank))


def test_matching_keys_score_lower_than_random_ones():
    torch.manual_seed(2)
    query, bank = torch.randn(8, 16), torch.randn(32, 16)
    loss = InfoNCELoss(0.1)
    assert loss(query, query.clone(), bank) < loss(query, torch.randn(8, 16), bank)


def test_loss_is_pure_and_reaches_only_the_query():
    query, key = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    bank = unit(10, 8)
    bank_before = bank.clone()
    InfoNCELoss(0.1)(query, key, bank).backward()
    assert torch.equal(bank, bank_before)
    assert query.grad.abs().sum() > 0
    # The loss itself stops nothing: keys are cut off by the method (torch.no_grad).
    assert key.grad is not None


def test_loss_stays_fp32_under_bf16_autocast():
    query, key = torch.randn(8, 16).bfloat16(), torch.randn(8, 16).bfloat16()  # as a bf16 head emits them
    bank = unit(32, 16)
    expected = InfoNCELoss(0.1)(query.float(), key.float(), bank)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = InfoNCELoss(0.1)(query, key, bank)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_non_positive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature)


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("memory_bank_size", 0, "must be > 0"),
        ("momentum", 1.5, r"must be in \[0, 1\]"),
        ("momentum", -0.1, r"must be in \[0, 1\]"),
    ],
)
def test_bad_config_raises(field, value, allowed):
    # The recipe checks its values, so a bad one fails before any network is built.
    with pytest.raises(ValueError, match=rf"^{field} = {value}: {allowed}"):
        MoCoConfig(**{field: value})


def test_projection_head_is_lightly_moco_v2_head():
    heads = pytest.importorskip("lightly.models.modules.heads")
    method = make_method()
    reference = heads.MoCoProjectionHead(FEATURE_DIM, 32, PROJECTION_DIM)  # v2: 2 layers, no BN
    reference.layers.load_state_dict(method.projection_head.state_dict())
    features = torch.randn(4, FEATURE_DIM)
    torch.testing.assert_close(method.projection_head(features), reference(features))


def test_key_encoder_starts_as_a_copy_and_is_frozen():
    method = make_method()
    online = [*method.backbone.parameters(), *method.projection_head.parameters()]
    for p_key, p_online in zip(key_parameters(method), online, strict=True):
        assert torch.equal(p_key, p_online) and p_key is not p_online
        assert not p_key.requires_grad
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for p in online}
    assert method.frozen_prefixes == ()


def test_bank_starts_as_random_unit_vectors():
    method = make_method()
    assert method.memory_bank.shape == (BANK_SIZE, PROJECTION_DIM)
    torch.testing.assert_close(method.memory_bank.norm(dim=1), torch.ones(BANK_SIZE))
    assert method.memory_bank.std(dim=0).min() > 0


# --- gradients and EMA ----------------------------------------------------------------------


def test_gradients_reach_the_query_encoder_only():
    method = make_method().train()
    assert_only_the_online_network_learns(method, key_parameters(method), images(), FEATURE_DIM)


def test_keys_are_cut_off_even_if_the_key_encoder_required_grad():
    method = make_method().train()
    assert_momentum_network_is_cut_off(method, key_parameters(method), images())


def test_ema_update_after_optimizer_step():
    method = make_method(momentum=0.5)  # halving is exact in floating point
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn_like(p))  # stands in for an optimizer step
    online = [p.clone() for p in [*method.backbone.parameters(), *method.projection_head.parameters()]]
    old_keys = [p.clone() for p in key_parameters(method)]
    method.after_optimizer_step()
    for new, old, p_online in zip(key_parameters(method), old_keys, online, strict=True):
        assert torch.equal(new, 0.5 * old + 0.5 * p_online)


def test_ema_update_with_the_default_momentum():
    method = make_method()
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in [*method.backbone.parameters(), *method.projection_head.parameters()]]
    old_keys = [p.clone() for p in key_parameters(method)]
    method.after_optimizer_step()
    for new, old, p_online in zip(key_parameters(method), old_keys, online, strict=True):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * p_online, rtol=0, atol=1e-6)


# --- the memory bank ------------------------------------------------------------------------


def test_enqueue_is_fifo_newest_first():
    method = make_method(memory_bank_size=5)
    initial = method.memory_bank.clone()
    first, second = unit(3, PROJECTION_DIM), unit(2, PROJECTION_DIM)
    method.enqueue(first)
    torch.testing.assert_close(method.memory_bank, torch.cat([first, initial[:2]]))
    method.enqueue(second)
    torch.testing.assert_close(method.memory_bank, torch.cat([second, first]))
    third = unit(2, PROJECTION_DIM)
    method.enqueue(third)  # the oldest two rows (first[1:]) drop off
    torch.testing.assert_close(method.memory_bank, torch.cat([third, second, first[:1]]))


def test_enqueue_batch_larger_than_bank_keeps_first_rows():
    method = make_method(memory_bank_size=4)
    keys = unit(7, PROJECTION_DIM)
    method.enqueue(keys)
    torch.testing.assert_close(method.memory_bank, keys[:4])


def test_loss_forward_leaves_the_bank_alone():
    method = make_method()
    before = method.memory_bank.clone()
    method.criterion(torch.randn(4, PROJECTION_DIM), torch.randn(4, PROJECTION_DIM), method.memory_bank)
    assert torch.equal(method.memory_bank, before)


def test_training_step_enqueues_both_views_keys_after_the_loss():
    method = make_method().train()
    x0, x1 = images(batch=4)
    before = method.memory_bank.clone()
    keys = torch.cat([method.embed_keys(x0), method.embed_keys(x1)])  # (2B, p)
    output = method.training_step([x0, x1])
    torch.testing.assert_close(method.memory_bank, torch.cat([keys, before[: BANK_SIZE - 8]]))
    # The loss was computed against the old bank, not one holding this batch's keys.
    h0, q0 = method.embed_queries(x0)
    _, q1 = method.embed_queries(x1)
    expected = 0.5 * (method.criterion(q0, keys[4:], before) + method.criterion(q1, keys[:4], before))
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()  # the in-place enqueue did not invalidate the graph


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip_includes_key_encoder_and_bank():
    method = make_method(seed=0).train()
    method.training_step(images())
    method.after_optimizer_step()
    state = method.checkpoint_state()
    assert "memory_bank" in state
    assert any(k.startswith("key_backbone.") for k in state)
    assert any(k.startswith("key_projection_head.") for k in state)

    fresh = make_method(seed=1)
    assert not torch.equal(fresh.memory_bank, method.memory_bank)
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
    method = make_method(memory_bank_size=64)
    key_before = [p.clone() for p in key_parameters(method)]
    bank_before = method.memory_bank.clone()
    config = TrainConfig(epochs=1, batch_size=16, lr=0.06, seed=3, device="cpu", precision="fp32")
    history = train(method, dataset, config, tmp_path)
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0].loss) and history.epochs[0].loss > 0
    # 4 steps x 32 keys replaced the 64 random rows with real, unit-norm keys.
    assert not torch.equal(method.memory_bank, bank_before)
    torch.testing.assert_close(method.memory_bank.norm(dim=1), torch.ones(64))
    assert all(not torch.equal(a, b) for a, b in zip(key_parameters(method), key_before, strict=True))
    assert all(p.grad is None for p in key_parameters(method))
