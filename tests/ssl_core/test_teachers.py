"""Frozen teachers: from an embedding-model file, and DINOv2 argument checks (no network)."""

from __future__ import annotations

import pytest
import torch

import ssl_core.teachers as teachers
from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from ssl_core.teachers import load_dinov2_teacher, load_teacher_file


@pytest.fixture(autouse=True)
def no_torch_hub(monkeypatch):
    """Fails any test that would reach torch.hub: the test machines have no internet."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.hub.load must not be called in tests")

    monkeypatch.setattr(teachers.torch.hub, "load", forbidden)


def test_teacher_from_file_is_frozen(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar").module
    info = EmbeddingModelInfo("resnet18_cifar", 512, 32, Normalization(), "simclr")
    path = tmp_path / "teacher.pt"
    save_embedding_model(path, backbone, info)

    teacher = load_teacher_file(path)
    assert teacher.embedding_dim == 512
    assert str(path) in teacher.description
    assert not any(p.requires_grad for p in teacher.module.parameters())
    assert not any(m.training for m in teacher.module.modules())
    with torch.no_grad():
        assert teacher.module(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_missing_teacher_file_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain") as error:
        load_teacher_file(tmp_path / "nope.pt")
    message = str(error.value)
    assert "nope.pt" in message and "model.pt" in message


def test_unknown_dinov2_name_raises():
    with pytest.raises(ValueError, match="dinov2_vitb14"):
        load_dinov2_teacher("dinov2_vitx99", 224)


@pytest.mark.parametrize("image_size", [32, 100, 225])
def test_dinov2_size_not_multiple_of_patch_raises(image_size):
    with pytest.raises(ValueError, match="multiple of 14"):
        load_dinov2_teacher("dinov2_vits14", image_size)


def test_unreachable_hub_raises_runtime_error_with_alternative(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(teachers.torch.hub, "load", offline)
    with pytest.raises(RuntimeError, match="embedding-model file as the teacher"):
        load_dinov2_teacher("dinov2_vits14", 28)


def test_a_dinov2_teacher_names_its_input_size(monkeypatch):
    # The student's resume fingerprint knows a hub teacher only by its description: a run distilled
    # at one input size must not be resumed at another.
    monkeypatch.setattr(teachers.torch.hub, "load", lambda *args, **kwargs: torch.nn.Conv2d(3, 4, 14, stride=14))
    small, large = load_dinov2_teacher("dinov2_vits14", 28), load_dinov2_teacher("dinov2_vits14", 56)
    assert small.description == "dinov2_vits14 at 28 px from torch.hub" and small.weights_sha256 is None
    assert large.description == "dinov2_vits14 at 56 px from torch.hub"


def test_resize_to_resizes_only_when_needed():
    seen = []
    network = torch.nn.Flatten()
    network.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    module = teachers.ResizeTo(network, 28)
    module(torch.randn(1, 3, 32, 32))
    module(torch.randn(1, 3, 28, 28))
    assert seen == [(28, 28), (28, 28)]
