"""Image transforms: the random views SSL methods learn from, and the eval transform.

The view recipe follows SimCLR (Chen et al., 2020, https://arxiv.org/abs/2002.05709,
appendix A) as the lightly CIFAR-10 benchmark uses it for 32 px images: random
resized crop, horizontal flip, color jitter with strength s (brightness, contrast,
saturation 0.8 s, hue 0.2 s, applied with probability 0.8), random grayscale, and no
blur (blurring a 32 px image destroys it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

# ImageNet statistics: the de-facto default, and what DINOv2 teachers expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std applied after scaling pixels to [0, 1]."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ViewConfig:
    """Parameters of one random view (SimCLR-style augmentation).

    Attributes:
        image_size: side of the square output crop, in pixels.
        crop_scale: (min, max) area fraction of the random resized crop.
        jitter_strength: s in SimCLR's color distortion; 0 disables jitter.
        jitter_prob: probability of applying color jitter.
        grayscale_prob: probability of converting to grayscale.
        flip_prob: probability of a horizontal flip.
        blur_prob: probability of a Gaussian blur (0 for 32 px images).
    """

    image_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_strength: float = 0.5
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    flip_prob: float = 0.5
    blur_prob: float = 0.0


def view_transform(config: ViewConfig, norm: Normalization) -> Callable[[Image.Image], torch.Tensor]:
    """One random view of a PIL image as a normalized (3, H, W) float tensor."""
    s = config.jitter_strength
    steps: list[Callable] = [
        T.RandomResizedCrop(config.image_size, scale=config.crop_scale, antialias=True),
        T.RandomHorizontalFlip(p=config.flip_prob),
    ]
    if s > 0 and config.jitter_prob > 0:
        jitter = T.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
        steps.append(T.RandomApply([jitter], p=config.jitter_prob))
    if config.grayscale_prob > 0:
        steps.append(T.RandomGrayscale(p=config.grayscale_prob))
    if config.blur_prob > 0:
        steps.append(random_gaussian_blur(config.image_size, config.blur_prob))
    steps += [T.ToTensor(), T.Normalize(norm.mean, norm.std)]
    return T.Compose(steps)


def random_gaussian_blur(image_size: int, p: float) -> Callable[[Image.Image], Image.Image]:
    """SimCLR's blur: kernel about 10% of the image side (odd), sigma in [0.1, 2], with probability p."""
    kernel = max(3, (image_size // 10) | 1)
    return T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p)


def eval_transform(image_size: int, norm: Normalization) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic transform for embedding: resize the short side, center crop."""
    return T.Compose(
        [
            T.Resize(image_size, antialias=True),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(norm.mean, norm.std),
        ]
    )


class MultiView:
    """Applies several transforms to the same image and returns the list of views."""

    def __init__(self, transforms: list[Callable[[Image.Image], torch.Tensor]]) -> None:
        if not transforms:
            raise ValueError("MultiView needs at least one transform.")
        self.transforms = transforms

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]
