"""Backbone construction: the CIFAR stem, torchvision ResNets, and name errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_core.backbones import available_backbones, build_backbone, infer_feature_dim


def test_resnet18_cifar_has_cifar_stem_and_512_features():
    backbone = build_backbone("resnet18_cifar")
    conv1 = backbone.module.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert isinstance(backbone.module.maxpool, nn.Identity)
    assert isinstance(backbone.module.fc, nn.Identity)
    assert backbone.feature_dim == 512 and backbone.name == "resnet18_cifar"
    with torch.no_grad():
        assert backbone.module.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_torchvision_resnet18_keeps_imagenet_stem():
    module = build_backbone("resnet18").module
    assert module.conv1.kernel_size == (7, 7) and module.conv1.stride == (2, 2)
    assert isinstance(module.maxpool, nn.MaxPool2d)


def test_torchvision_resnet50_gives_2048_features():
    backbone = build_backbone("resnet50")
    assert backbone.feature_dim == 2048
    with torch.no_grad():
        assert backbone.module.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_infer_feature_dim_matches_and_keeps_mode():
    module = build_backbone("resnet18_cifar").module.train()
    assert infer_feature_dim(module, 32) == 512
    assert module.training


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="resnet18_cifar") as error:
        build_backbone("vgg16")
    assert "vgg16" in str(error.value)


def test_available_backbones():
    names = available_backbones()
    assert {"resnet18", "resnet18_cifar", "resnet50", "resnet50_cifar"} <= set(names)
    assert names == sorted(names)
