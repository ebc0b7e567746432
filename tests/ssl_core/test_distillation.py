"""QueueDistillationLoss against explicit probabilities, and the Distillation method's bookkeeping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses import QueueDistillationLoss
from ssl_core.methods.distillation import Distillation, DistillationConfig
from ssl_core.methods.recipes import MAX_QUEUE_SIZE, auto_queue_size
from tests.ssl_core.tiny import tiny_backbone

FEATURE_DIM, TEACHER_DIM = 16, 8


def reference_distillation(teacher, student, queue, temperature):
    """Mean over the batch of sum_j p_t[j] * (log p_t[j] - log p_s[j]), softmax written out."""
    teacher, student, queue = teacher.double(), student.double(), queue.double()
    losses = []
    for t, s in zip(teacher, student, strict=True):
        p_t = torch.exp(t @ queue.T / temperature)
        p_t = p_t / p_t.sum()
        p_s = torch.exp(s @ queue.T / temperature)
        p_s = p_s / p_s.sum()
        losses.append((p_t * (p_t.log() - p_s.log())).sum())
    return torch.stack(losses).mean()


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def tiny_teacher() -> nn.Module:
    """A teacher with BatchNorm, so train/eval mode changes its output."""
    return nn.Sequential(
        nn.Conv2d(3, TEACHER_DIM, 3, 2, 1), nn.BatchNorm2d(TEACHER_DIM), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def make_method(queue_size: int = 32, seed: int = 0, **config) -> Distillation:
    torch.manual_seed(seed)
    return Distillation(
        tiny_backbone(), FEATURE_DIM, tiny_teacher(), TEACHER_DIM, DistillationConfig(queue_size=queue_size, **config)
    )


# --- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_loss_matches_explicit_kl(temperature):
    torch.manual_seed(0)
    teacher, student, queue = unit(5, 8), unit(5, 8), unit(12, 8)
    loss = QueueDistillationLoss(temperature)(teacher, student, queue)
    expected = reference_distillation(teacher, student, queue, temperature)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_loss_is_zero_when_student_equals_teacher():
    torch.manual_seed(1)
    teacher, queue = unit(5, 8), unit(12, 8)
    assert QueueDistillationLoss()(teacher, teacher.clone(), queue).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_is_positive_when_student_differs():
    torch.manual_seed(2)
    assert QueueDistillationLoss()(unit(5, 8), unit(5, 8), unit(12, 8)).item() > 0


def test_gradient_flows_to_student_only():
    torch.manual_seed(3)
    teacher = unit(4, 8).requires_grad_(True)
    student = unit(4, 8).requires_grad_(True)
    queue = unit(10, 8).requires_grad_(True)
    QueueDistillationLoss()(teacher, student, queue).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_non_positive_temperature_raises():
    with pytest.raises(ValueError, match="temperature"):
        QueueDistillationLoss(0.0)


# --- queue size -----------------------------------------------------------------------------


def test_auto_queue_size_examples():
    assert auto_queue_size(10**6) == 8192
    assert auto_queue_size(5000) == 2048
    assert auto_queue_size(10) == 16


def test_auto_queue_size_is_monotone_and_capped():
    sizes = [auto_queue_size(n) for n in range(1, 50_000, 97)]
    assert sizes == sorted(sizes)
    assert max(sizes) == MAX_QUEUE_SIZE


@pytest.mark.parametrize("queue_size", [0, MAX_QUEUE_SIZE + 1])
def test_queue_size_out_of_range_raises(queue_size):
    # The recipe checks the range, so a bad value fails before any method is built.
    with pytest.raises(ValueError, match=f"queue_size = {queue_size}"):
        DistillationConfig(queue_size=queue_size)


@pytest.mark.parametrize("queue_size", [1, MAX_QUEUE_SIZE])
def test_queue_size_bounds_are_accepted(queue_size):
    assert make_method(queue_size=queue_size).queue.shape == (queue_size, TEACHER_DIM)


def test_resolved_queue_size_scales_auto_and_keeps_a_number():
    assert DistillationConfig().resolved_queue_size(5000) == auto_queue_size(5000) == 2048
    assert DistillationConfig(queue_size=100).resolved_queue_size(5000) == 100


def test_constructor_refuses_an_unresolved_auto_queue():
    with pytest.raises(ValueError, match="queue_size = 'auto'"):
        Distillation(tiny_backbone(), FEATURE_DIM, tiny_teacher(), TEACHER_DIM, DistillationConfig(queue_size="auto"))


# --- the method -----------------------------------------------------------------------------


def test_teacher_is_frozen_and_not_trainable():
    method = make_method()
    assert all(not p.requires_grad for p in method.teacher.parameters())
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for p in method.teacher.parameters())
    assert trainable == {id(p) for p in [*method.backbone.parameters(), *method.student_head.parameters()]}


def test_teacher_stays_in_eval_mode_when_training():
    method = make_method()
    method.train()
    assert method.training and method.backbone.training
    assert not method.teacher.training
    assert not any(m.training for m in method.teacher.modules())


def test_checkpoint_state_excludes_teacher_and_round_trips():
    method = make_method(seed=0)
    method.enqueue(unit(5, TEACHER_DIM))
    state = method.checkpoint_state()
    assert state and not any(k.startswith("teacher.") for k in state)
    assert "queue" in state

    fresh = make_method(seed=1)
    fresh.load_checkpoint_state(state)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # The fresh instance keeps its own teacher (rebuilt from its source, not the checkpoint).
    assert not torch.equal(fresh.teacher[0].weight, method.teacher[0].weight)


def test_load_checkpoint_state_rejects_missing_student_keys():
    state = make_method().checkpoint_state()
    del state["student_head.weight"]
    with pytest.raises(RuntimeError, match="student_head.weight"):
        make_method().load_checkpoint_state(state)


def test_enqueue_is_fifo_newest_first():
    method = make_method(queue_size=5)
    first = torch.arange(3 * TEACHER_DIM, dtype=torch.float32).view(3, TEACHER_DIM)
    second = 100 + torch.arange(2 * TEACHER_DIM, dtype=torch.float32).view(2, TEACHER_DIM)
    third = -torch.ones(2, TEACHER_DIM)
    method.enqueue(first)
    torch.testing.assert_close(method.queue[:3], first)
    assert torch.equal(method.queue[3:], torch.zeros(2, TEACHER_DIM))
    method.enqueue(second)
    torch.testing.assert_close(method.queue, torch.cat([second, first]))
    method.enqueue(third)  # the oldest two rows (first[1:]) drop off
    torch.testing.assert_close(method.queue, torch.cat([third, second, first[:1]]))


def test_enqueue_batch_larger_than_queue_keeps_first_rows():
    method = make_method(queue_size=4)
    batch = torch.randn(7, TEACHER_DIM)
    method.enqueue(batch)
    torch.testing.assert_close(method.queue, batch[:4])


@pytest.mark.parametrize("mixup", [True, False])
def test_training_step_gives_finite_loss_and_no_teacher_grads(mixup):
    method = make_method(mixup=mixup).train()
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    images = torch.randn(8, 3, 32, 32)
    output = method.training_step([images])
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert output.features.shape == (8, FEATURE_DIM) and not output.features.requires_grad
    output.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.student_head.weight.grad is not None and method.student_head.weight.grad.abs().sum() > 0
    assert method.backbone[0].weight.grad is not None
    # The teacher ran in eval mode: its BatchNorm running statistics did not move.
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    # The batch's teacher embeddings were queued (unit rows at the front).
    torch.testing.assert_close(method.queue[:8].norm(dim=1), torch.ones(8))
