"""Backbones: networks that map an image batch to pooled feature vectors.

Two families are supported:

* ``resnet18_cifar`` (and ``resnet34_cifar``, ``resnet50_cifar``, ...): the ResNet
  variant used for 32x32 images in the SimCLR paper (Chen et al., 2020,
  https://arxiv.org/abs/2002.05709, appendix B.9) and the lightly benchmarks: a
  3x3 stride-1 first convolution and no max-pool, so the last stage still sees a
  4x4 map instead of a 1x1 one.
* any torchvision classification model by its torchvision name (``resnet50``,
  ``convnext_tiny``, ``efficientnet_b0``, ``mobilenet_v3_small``, ``vit_b_16``,
  ``swin_t``, ...), for images of 64 px and up.

The classification layer (the model's last ``nn.Linear``) is replaced by an
identity, so the module returns what fed it: the globally pooled features, shape
(B, feature_dim); the class token for ViTs; the penultimate fully connected layer
for models whose classifier is an MLP (VGG, AlexNet, MobileNetV3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

CIFAR_SUFFIX = "_cifar"
# Models whose last layer is a convolution: there is no linear classifier to remove.
NO_LINEAR_CLASSIFIER = ("squeezenet1_0", "squeezenet1_1")
# Constructor arguments that fix a model's input size (position embeddings, attention
# partitions); the other models accept any size above their minimum.
INPUT_SIZE_ARGUMENT = {"vit_": "image_size", "maxvit_": "input_size"}
# torchvision builds MobileNetV3 and EfficientNet with BatchNorm momentum 0.01 (TensorFlow's
# 0.99 decay), tuned for ImageNet schedules of ~10^5 steps. SSL features are read in eval mode,
# from the running statistics, and after a short run these still lean on their initial (0, 1):
# where a deep layer's true variance is tiny, the remnant of the initial 1 dominates and the
# activations vanish. Measured on mobilenet_v3_small at 32 px after 200 steps: eval-mode feature
# std 4e-6 of train mode's at 0.01, 0.79 at 0.1. PyTorch's default 0.1 forgets the initial
# statistics ten times faster; runs of fewer than ~200 steps stay off even so.
MIN_BATCHNORM_MOMENTUM = 0.1


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and the size of the vectors it returns."""

    module: nn.Module
    feature_dim: int
    name: str


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(torchvision_classifier_names() + [name + CIFAR_SUFFIX for name in torchvision_resnet_names()])


def torchvision_classifier_names() -> list[str]:
    """torchvision's image classification models that end in a linear classifier."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if n not in NO_LINEAR_CLASSIFIER]


def torchvision_resnet_names() -> list[str]:
    """torchvision classification models of the ResNet family (``fc`` head), which take the CIFAR stem."""
    return [n for n in torchvision_classifier_names() if n.startswith(("resnet", "wide_resnet", "resnext"))]


def build_backbone(name: str, image_size: int | None = None) -> Backbone:
    """Builds a randomly initialized backbone by name.

    Args:
        name: a torchvision classification model name, or
            ``<torchvision resnet name>_cifar`` for 32 px images.
        image_size: input side in pixels, for the models built for one size (ViT,
            MaxViT); ``None`` keeps torchvision's 224. Ignored by the others.

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
    if base_name not in (torchvision_resnet_names() if cifar_stem else torchvision_classifier_names()):
        raise ValueError(
            f"Unknown backbone {name!r}. Choose a torchvision classification model name, or a ResNet "
            f"name with the {CIFAR_SUFFIX!r} suffix for 32 px images, e.g. 'resnet18_cifar'. "
            f"Available: {', '.join(available_backbones())}"
        )
    # weights=None: pretrained weights would need internet, and SSL starts from scratch.
    model = torchvision.models.get_model(base_name, weights=None, **_constructor_arguments(base_name, image_size))
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    feature_dim = _remove_classifier(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            module.momentum = max(module.momentum, MIN_BATCHNORM_MOMENTUM)
    return Backbone(module=model, feature_dim=feature_dim, name=name)


def _constructor_arguments(name: str, image_size: int | None) -> dict:
    arguments: dict = {}
    if name in ("googlenet", "inception_v3"):
        # Auxiliary classifiers make forward() return a tuple in train mode; SSL needs features.
        arguments.update(aux_logits=False, init_weights=True)
    for prefix, argument in INPUT_SIZE_ARGUMENT.items():
        if name.startswith(prefix) and image_size is not None:
            arguments[argument] = image_size
    return arguments


def _remove_classifier(model: nn.Module) -> int:
    """Replaces the last ``nn.Linear`` (in definition order: the classifier) by an identity.

    Returns:
        The classifier's input size: the feature dimension.
    """
    linear_layers = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    name, classifier = linear_layers[-1]
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, nn.Identity())  # also for a Sequential's "1", "6", ...
    return classifier.in_features


@torch.no_grad()
def infer_feature_dim(module: nn.Module, image_size: int) -> int:
    """Feature size of ``module`` found by a forward pass (for wrapped teachers)."""
    was_training = module.training
    module.eval()
    features = module(torch.zeros(1, 3, image_size, image_size))
    module.train(was_training)
    return int(features.flatten(1).shape[1])
