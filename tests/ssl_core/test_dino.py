"""DINO: the loss against Algorithm 1 and lightly, explicit centering, schedules, multi-crop, training."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssl_core.augment import Normalization, ViewConfig
from ssl_core.data import ManifestDataset
from ssl_core.engine import TrainConfig, train
from ssl_core.losses.dino import DINOLoss, next_center, softmax_center_teacher
from ssl_core.methods import MultiCropConfig
from ssl_core.methods.dino import DINO, DINOConfig, features_by_resolution
from ssl_core.multicrop import multicrop_transform
from tests.ssl_core.tiny import tiny_backbone

FEATURE_DIM = 16
NUM_LOCAL = 2
TINY = dict(multicrop=MultiCropConfig(num_local_crops=NUM_LOCAL), hidden_dim=32, bottleneck_dim=8, output_dim=64)


def make_method(seed: int = 0, **config) -> DINO:
    torch.manual_seed(seed)
    return DINO(tiny_backbone(), FEATURE_DIM, DINOConfig(**{**TINY, **config}))


def random_views(batch: int = 4, num_local: int = NUM_LOCAL, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=generator) for _ in range(2)] + [
        torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(num_local)
    ]


def random_logits(num_crops: int, batch: int, dim: int, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(batch, dim, generator=generator) for _ in range(num_crops)]


# --- the loss -------------------------------------------------------------------------------


def reference_dino_loss(student, teacher, center, student_temperature, teacher_temperature):
    """Algorithm 1's H(t, s) written out, averaged over every (teacher i, student j != i) pair."""
    total, pairs = 0.0, 0
    for i, t_crop in enumerate(teacher):
        for j, s_crop in enumerate(student):
            if i == j:
                continue
            per_image = []
            for t, s in zip(t_crop.double(), s_crop.double(), strict=True):
                p_t = torch.exp((t - center.double()[0]) / teacher_temperature)
                p_t = p_t / p_t.sum()
                p_s = torch.exp(s / student_temperature)
                p_s = p_s / p_s.sum()
                per_image.append(-(p_t * p_s.log()).sum())
            total += torch.stack(per_image).mean()
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("num_local", [0, 3])
@pytest.mark.parametrize("teacher_temperature", [0.04, 0.07])
def test_loss_matches_algorithm_1(num_local, teacher_temperature):
    generator = torch.Generator().manual_seed(num_local)
    student = random_logits(2 + num_local, 5, 16, generator)
    teacher = random_logits(2, 5, 16, generator)
    center = torch.randn(1, 16, generator=generator)
    probs = [softmax_center_teacher(t, center, teacher_temperature) for t in teacher]
    loss = DINOLoss(0.1)(student, probs)
    expected = reference_dino_loss(student, teacher, center, 0.1, teacher_temperature)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_two_crops_give_algorithm_1_symmetric_loss():
    """With only the two global crops the loss is H(t1, s2) / 2 + H(t2, s1) / 2."""
    generator = torch.Generator().manual_seed(3)
    (s1, s2), (t1, t2) = random_logits(2, 4, 8, generator), random_logits(2, 4, 8, generator)
    center = torch.randn(1, 8, generator=generator)

    def h(t, s):
        t = F.softmax((t - center) / 0.04, dim=1)
        return -(t * F.log_softmax(s / 0.1, dim=1)).sum(dim=1).mean()

    probs = [softmax_center_teacher(t, center, 0.04) for t in (t1, t2)]
    torch.testing.assert_close(DINOLoss(0.1)([s1, s2], probs), h(t1, s2) / 2 + h(t2, s1) / 2)


@pytest.mark.parametrize("num_local", [0, 4])
def test_loss_and_center_match_lightly(num_local):
    lightly_loss = pytest.importorskip("lightly.loss")
    generator = torch.Generator().manual_seed(11)
    dim, teacher_temperature = 32, 0.055
    student = random_logits(2 + num_local, 8, dim, generator)
    teacher = random_logits(2, 8, dim, generator)
    center = torch.randn(1, dim, generator=generator)

    reference = lightly_loss.DINOLoss(
        output_dim=dim,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=30,
        student_temp=0.1,
        center_momentum=0.9,
    )
    reference.center.copy_(center.view(1, 1, dim))
    # lightly's forward takes (teacher, student) and moves its center as a side effect.
    expected = reference(teacher, student, teacher_temp=teacher_temperature)

    probs = [softmax_center_teacher(t, center, teacher_temperature) for t in teacher]
    loss = DINOLoss(0.1)(student, probs)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(next_center(center, torch.cat(teacher), 0.9), reference.center.view(1, dim))


def test_loss_is_pure_and_gradients_reach_only_the_student():
    generator = torch.Generator().manual_seed(5)
    student = [x.requires_grad_() for x in random_logits(4, 3, 8, generator)]
    teacher = [x.requires_grad_() for x in random_logits(2, 3, 8, generator)]
    center = torch.zeros(1, 8)
    criterion = DINOLoss(0.1)
    assert not list(criterion.buffers()) and not list(criterion.parameters())
    criterion(student, [softmax_center_teacher(t, center, 0.04) for t in teacher]).backward()
    assert all(s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)
    assert torch.equal(center, torch.zeros(1, 8))


def test_loss_stays_fp32_under_autocast():
    generator = torch.Generator().manual_seed(7)
    student = random_logits(4, 8, 256, generator)
    probs = [softmax_center_teacher(t, torch.zeros(1, 256), 0.04) for t in random_logits(2, 8, 256, generator)]
    expected = DINOLoss(0.1)(student, probs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = DINOLoss(0.1)(student, probs)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


def test_next_center_is_a_new_tensor():
    center = torch.ones(1, 4)
    logits = torch.tensor([[0.0, 2.0, 4.0, 6.0], [2.0, 4.0, 6.0, 8.0]])
    new = next_center(center, logits, 0.9)
    torch.testing.assert_close(new, torch.tensor([[1.0, 1.2, 1.4, 1.6]]))
    assert torch.equal(center, torch.ones(1, 4))


def test_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="student_temperature"):
        DINOLoss(0.0)
    with pytest.raises(ValueError, match="two distinct crops"):
        DINOLoss()([torch.randn(2, 4)], [torch.rand(2, 4)])


# --- the method -----------------------------------------------------------------------------


def test_center_changes_only_by_the_explicit_update_once_per_step(monkeypatch):
    method = make_method()
    views = random_views()
    torch.manual_seed(1)
    method.center.normal_()  # a non-trivial center, so that the update is visible
    before = method.center.clone()
    expected = next_center(before, method.forward_teacher(views[:2]), method.config.center_momentum)

    # Calling the loss on its own leaves the method's center alone.
    student = [torch.randn(4, 64) for _ in range(method.num_views)]
    method.criterion(student, [softmax_center_teacher(torch.randn(4, 64), method.center, 0.04)] * 2)
    assert torch.equal(method.center, before)

    calls = []
    update = method.update_center
    monkeypatch.setattr(method, "update_center", lambda logits: (calls.append(1), update(logits)))
    method.training_step(views)
    assert len(calls) == 1
    torch.testing.assert_close(method.center, expected)


def test_teacher_gets_no_gradient_and_last_layer_gain_stays_one():
    method = make_method(freeze_last_layer_fraction=0.0)
    trainable = {id(p) for p in method.trainable_parameters()}
    teacher = list(method.teacher_backbone.parameters()) + list(method.teacher_head.parameters())
    assert not trainable & {id(p) for p in teacher}
    assert id(method.head.last_layer_gain) not in trainable
    assert id(method.head.last_layer_direction) in trainable

    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for step in range(2):
        method.before_step(step, 10)
        optimizer.zero_grad()
        method.training_step(random_views(seed=step)).loss.backward()
        optimizer.step()
        method.after_optimizer_step()
    assert all(p.grad is None and not p.requires_grad for p in teacher)
    assert method.head.last_layer_direction.grad is not None
    torch.testing.assert_close(method.head.last_layer_gain, torch.ones(64, 1))
    # Every pseudo-class prototype has unit norm.
    torch.testing.assert_close(method.head.last_layer.weight.norm(dim=1), torch.ones(64))


def test_last_layer_frozen_at_first_but_kept_in_the_optimizer():
    method = make_method(freeze_last_layer_fraction=0.1)
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5, weight_decay=0.1)
    direction = method.head.last_layer_direction
    start = direction.detach().clone()
    method.before_step(0, 100)
    optimizer.zero_grad(set_to_none=True)
    method.training_step(random_views()).loss.backward()
    optimizer.step()
    assert direction.grad is None and torch.equal(direction, start)  # not even weight decay
    method.before_step(10, 100)
    assert direction.requires_grad
    assert any(p is direction for p in method.trainable_parameters())


def test_teacher_follows_the_student_by_ema():
    method = make_method()
    with torch.no_grad():
        for p in method.head.parameters():
            p.add_(1.0)
    teacher_before = [p.clone() for p in method.teacher_head.parameters()]
    method.before_step(0, 100)
    method.after_optimizer_step()
    m = method.momentum
    for before, teacher, student in zip(
        teacher_before, method.teacher_head.parameters(), method.head.parameters(), strict=True
    ):
        torch.testing.assert_close(teacher, m * before + (1 - m) * student)


def test_schedules_at_start_middle_and_end():
    method = make_method(
        warmup_teacher_temperature=0.04, teacher_temperature=0.07, warmup_fraction=0.2, base_momentum=0.996
    )
    expected = {0: (0.04, 0.996), 100: (0.055, None), 200: (0.07, None), 500: (0.07, 0.998), 1000: (0.07, 1.0)}
    for step, (temperature, momentum) in expected.items():
        method.before_step(step, 1000)
        assert method.teacher_temperature.item() == pytest.approx(temperature)
        if momentum is not None:
            assert method.momentum == pytest.approx(momentum)


def test_features_grouped_by_resolution_match_per_view_forwards():
    backbone = tiny_backbone().eval()
    views = random_views(batch=3)
    expected = torch.cat([backbone(v) for v in views])
    torch.testing.assert_close(features_by_resolution(backbone, views), expected)


def test_wrong_number_of_views_and_bad_config_raise():
    with pytest.raises(
        ValueError, match=rf"expects {2 + NUM_LOCAL} views \(2 global \+ {NUM_LOCAL} local\), got {3 + NUM_LOCAL}"
    ):
        make_method().training_step(random_views(num_local=NUM_LOCAL + 1))
    with pytest.raises(ValueError, match=r"^teacher_temperature = 0.0: must be > 0"):
        DINOConfig(teacher_temperature=0.0)
    with pytest.raises(ValueError, match=r"^base_momentum = 1.5: must be in \[0, 1\]"):
        DINOConfig(base_momentum=1.5)


def test_checkpoint_round_trip_keeps_teacher_and_center():
    method = make_method()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    method.before_step(50, 100)
    method.training_step(random_views()).loss.backward()
    optimizer.step()
    method.after_optimizer_step()
    state = method.checkpoint_state()
    assert "center" in state and any(k.startswith("teacher_head.") for k in state)
    assert any(k.startswith("teacher_backbone.") for k in state)
    assert not torch.equal(state["center"], torch.zeros_like(state["center"]))

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = make_method(seed=1)
    restored.load_checkpoint_state(torch.load(buffer, weights_only=True))
    for key, value in method.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


# --- multi-crop and training ----------------------------------------------------------------


def test_multicrop_on_a_real_image(cifar_image):
    transform = multicrop_transform(MultiCropConfig(num_local_crops=4), 32, Normalization())
    views = transform(cifar_image)
    assert len(views) == 6
    assert all(v.shape == (3, 32, 32) for v in views[:2])
    assert all(v.shape == (3, 16, 16) for v in views[2:])  # local_size None: half the global side
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert not torch.equal(views[0], views[1])


def test_multicrop_sizes_follow_the_global_size_unless_local_size_is_set(cifar_image):
    views = multicrop_transform(MultiCropConfig(num_local_crops=1), 48, Normalization())(cifar_image)
    assert [v.shape[-1] for v in views] == [48, 48, 24]
    views = multicrop_transform(MultiCropConfig(num_local_crops=1, local_size=12), 48, Normalization())(cifar_image)
    assert [v.shape[-1] for v in views] == [48, 48, 12]


def test_train_transform_is_dinos_multicrop(cifar_image):
    """DINO's views are its recipe's multi-crop; only the image size comes from the view settings."""
    method = make_method()
    view = ViewConfig(image_size=32, crop_scale=(0.9, 1.0), jitter_prob=0.0)
    views = method.train_transform(view, Normalization())(cifar_image)
    assert len(views) == method.num_views == 2 + NUM_LOCAL
    assert [v.shape[-1] for v in views] == [32, 32] + [16] * NUM_LOCAL


def test_multicrop_rejects_bad_config():
    with pytest.raises(ValueError, match=r"^local_crop_scale = \(0.5, 0.1\)"):
        MultiCropConfig(local_crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match=r"^solarize_prob = 1.5: must be in \[0, 1\]"):
        MultiCropConfig(solarize_prob=1.5)
    with pytest.raises(ValueError, match=r"^num_local_crops = -1"):
        MultiCropConfig(num_local_crops=-1)
    with pytest.raises(ValueError, match=r"^local_size = 0"):
        MultiCropConfig(local_size=0)


def test_a_few_engine_steps_on_real_images(cifar_folder: Path, tmp_path: Path):
    crops = MultiCropConfig(num_local_crops=NUM_LOCAL)
    method = make_method()
    transform = method.train_transform(method.view_config(32), Normalization())
    dataset = ManifestDataset(cifar_folder, splits=["train"], transform=transform)
    assert method.num_views == crops.num_views
    losses = []
    config = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=3, device="cpu", precision="fp32")
    history = train(method, dataset, config, tmp_path / "ckpt", on_step=lambda info: losses.append(info.loss))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert history.epochs[0].loss == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert not torch.equal(method.center, torch.zeros_like(method.center))
    assert not torch.equal(method.head.mlp[0].weight, method.teacher_head.mlp[0].weight)
