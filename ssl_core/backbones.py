"""Backbones: networks that map an image batch to pooled feature vectors.

Two families are supported:

* ``resnet18_cifar`` (and ``resnet34_cifar``, ``resnet50_cifar``, ...): the ResNet
  variant used for 32x32 images in the SimCLR paper (Chen et al., 2020,
  https://arxiv.org/abs/2002.05709, appendix B.9) and the lightly benchmarks: a
  3x3 stride-1 first convolution and no max-pool, so the last stage still sees a
  4x4 map instead of a 1x1 one.
* any torchvision ResNet by its torchvision name (``resnet18``, ``resnet50``,
  ``wide_resnet50_2``, ``resnext50_32x4d``, ...), for images of 64 px and up.

In both cases the classification layer is replaced by an identity, so the module
returns the globally average-pooled features, shape (B, feature_dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

CIFAR_SUFFIX = "_cifar"


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and the size of the vectors it returns."""

    module: nn.Module
    feature_dim: int
    name: str


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    resnets = torchvision_resnet_names()
    return sorted(resnets + [name + CIFAR_SUFFIX for name in resnets])


def torchvision_resnet_names() -> list[str]:
    """torchvision classification models of the ResNet family (``fc`` head)."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if n.startswith(("resnet", "wide_resnet", "resnext"))]


def build_backbone(name: str) -> Backbone:
    """Builds a randomly initialized backbone by name.

    Args:
        name: ``<torchvision resnet name>`` or ``<torchvision resnet name>_cifar``.

    Returns:
        The backbone with its classification layer removed.

    Raises:
        ValueError: if ``name`` is not one of :func:`available_backbones`.

    Example:
        >>> backbone = build_backbone("resnet18_cifar")
        >>> backbone.module(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """
    cifar_stem = name.endswith(CIFAR_SUFFIX)
    base_name = name[: -len(CIFAR_SUFFIX)] if cifar_stem else name
    if base_name not in torchvision_resnet_names():
        raise ValueError(
            f"Unknown backbone {name!r}. Choose a torchvision ResNet name, optionally "
            f"with the {CIFAR_SUFFIX!r} suffix for 32 px images, e.g. 'resnet18_cifar'. "
            f"Available: {', '.join(available_backbones())}"
        )
    # weights=None: pretrained weights would need internet, and SSL starts from scratch.
    model = torchvision.models.get_model(base_name, weights=None)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return Backbone(module=model, feature_dim=feature_dim, name=name)


@torch.no_grad()
def infer_feature_dim(module: nn.Module, image_size: int) -> int:
    """Feature size of ``module`` found by a forward pass (for wrapped teachers)."""
    was_training = module.training
    module.eval()
    features = module(torch.zeros(1, 3, image_size, image_size))
    module.train(was_training)
    return int(features.flatten(1).shape[1])
