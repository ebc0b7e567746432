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


# One model per torchvision family, with the size of the features that fed its classifier.
FAMILIES = {
    "efficientnet_b0": 1280,
    "mobilenet_v3_small": 1024,  # its classifier is an MLP: the hidden layer's output
    "convnext_tiny": 768,
    "swin_t": 768,
    "densenet121": 1024,
    "regnet_y_400mf": 440,
    "shufflenet_v2_x0_5": 1024,
    "googlenet": 1024,
    "vit_b_32": 768,  # the class token
}


@pytest.mark.parametrize("name", FAMILIES)
def test_torchvision_classifiers_give_pooled_features(name: str):
    backbone = build_backbone(name, image_size=64)
    assert backbone.feature_dim == FAMILIES[name]
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in backbone.module.modules())
    torch.manual_seed(0)
    features = backbone.module.train()(torch.randn(2, 3, 64, 64))  # train mode: no auxiliary outputs either
    assert features.shape == (2, FAMILIES[name])


def test_vit_is_built_for_the_requested_image_size():
    module = build_backbone("vit_b_32", image_size=64).module
    assert module.image_size == 64 and module.encoder.pos_embedding.shape[1] == (64 // 32) ** 2 + 1


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="resnet18_cifar") as error:
        build_backbone("vgg16_cifar")  # the CIFAR stem exists for ResNets only
    assert "vgg16_cifar" in str(error.value)
    with pytest.raises(ValueError, match="Unknown backbone 'squeezenet1_0'"):
        build_backbone("squeezenet1_0")  # ends in a convolution: no linear classifier to remove


def test_available_backbones():
    names = available_backbones()
    assert {"resnet18", "resnet18_cifar", "resnet50", "resnet50_cifar", "convnext_tiny", "vit_b_16"} <= set(names)
    assert "squeezenet1_0" not in names and "convnext_tiny_cifar" not in names
    assert names == sorted(names)


def test_a_non_resnet_backbone_pretrains_through_the_engine(cifar_folder, tmp_path):
    """MobileNetV3 (BatchNorm, Hardswish, dropout in its kept MLP) trains with the default engine settings."""
    from ssl_core.augment import MultiView, Normalization, ViewConfig, view_transform
    from ssl_core.data import ManifestDataset
    from ssl_core.engine import TrainConfig, train
    from ssl_core.methods import SimCLRConfig
    from ssl_core.methods.factory import build_method

    torch.manual_seed(0)
    backbone = build_backbone("mobilenet_v3_small")
    method = build_method("simclr", backbone, SimCLRConfig(projection_hidden_dim=64, projection_dim=32))
    data = ManifestDataset(cifar_folder, ["train"], MultiView([view_transform(ViewConfig(32), Normalization())] * 2))
    before = [p.detach().clone() for p in backbone.module.parameters()]
    history = train(method, data, TrainConfig(epochs=1, batch_size=16, lr=0.05, device="cpu"), tmp_path)
    assert torch.isfinite(torch.tensor(history.epochs[0].loss)) and not history.epochs[0].collapsed
    assert any(not torch.equal(b, p) for b, p in zip(before, backbone.module.parameters(), strict=True))


def test_eval_mode_features_survive_a_short_run_of_a_low_momentum_batchnorm_model():
    """torchvision's MobileNetV3 comes with BatchNorm momentum 0.01: after 100 training-mode steps its
    running statistics still lean on their initial (0, 1), and eval-mode features vanish (1e-7 of the
    training-mode scale, measured). Built here with PyTorch's 0.1, they are on that scale: 2.2x here, 1.8-2.6x
    at other step counts and batch sizes (the bound of 2 that 200 steps of 64 were held to passed by 0.0007)."""
    torch.manual_seed(0)
    backbone = build_backbone("mobilenet_v3_small", 32).module
    momenta = {m.momentum for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert momenta == {0.1}
    images = torch.rand(32, 3, 32, 32)
    with torch.no_grad():
        for _ in range(100):
            backbone.train()(torch.rand(32, 3, 32, 32))
        train_std = backbone.train()(images).std(dim=0).mean()
        eval_std = backbone.eval()(images).std(dim=0).mean()
    assert 0.2 < eval_std / train_std < 5
