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
# SimCLR's Gaussian blur: sigma drawn uniformly in this range (appendix A).
BLUR_SIGMA = (0.1, 2.0)
# Solarization inverts pixels at or above this value (of 255), as torchvision's RandomSolarize(128).
SOLARIZE_THRESHOLD = 128


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

    def spec(self) -> ViewSpec:
        """The random view these settings describe, SimCLR's color distortion of strength s."""
        s = self.jitter_strength
        return ViewSpec(
            size=self.image_size,
            crop_scale=self.crop_scale,
            flip_prob=self.flip_prob,
            jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
            jitter_prob=self.jitter_prob if s > 0 else 0.0,
            grayscale_prob=self.grayscale_prob,
            blur_prob=self.blur_prob,
        )


@dataclass(frozen=True)
class ViewSpec:
    """One random view, step by step: what both renderers follow.

    :func:`pil_view` renders it per image with torchvision's PIL transforms (the
    DataLoader path); :class:`ssl_core.batch_augment.BatchViews` renders it for a
    whole batch on the device, drawing the same random parameters per image.

    Attributes:
        size: side of the square output, in pixels.
        crop_scale: (min, max) area fraction of the random resized crop (aspect
            ratio in (3/4, 4/3), torchvision's default).
        flip_prob: probability of a horizontal flip.
        jitter: (brightness, contrast, saturation, hue) strengths of color jitter, as
            torchvision's ``ColorJitter`` takes them.
        jitter_prob: probability of applying color jitter; 0 disables it.
        grayscale_prob: probability of converting to grayscale.
        blur_prob: probability of a Gaussian blur, sigma in [0.1, 2].
        solarize_prob: probability of solarizing (pixels >= 128 of 255 inverted).
        bicubic: bicubic rather than bilinear resizing of the crop (DINO's crops).
    """

    size: int
    crop_scale: tuple[float, float]
    flip_prob: float
    jitter: tuple[float, float, float, float]
    jitter_prob: float
    grayscale_prob: float
    blur_prob: float = 0.0
    solarize_prob: float = 0.0
    bicubic: bool = False

    @property
    def has_jitter(self) -> bool:
        return self.jitter_prob > 0 and any(strength > 0 for strength in self.jitter)

    @property
    def blur_kernel_size(self) -> int:
        """SimCLR's blur kernel: about 10% of the image side, odd, at least 3 (appendix A)."""
        return max(3, (self.size // 10) | 1)


def view_transform(config: ViewConfig, norm: Normalization) -> Callable[[Image.Image], torch.Tensor]:
    """One random view of a PIL image as a normalized (3, H, W) float tensor."""
    return pil_view(config.spec(), norm)


def pil_view(spec: ViewSpec, norm: Normalization) -> Callable[[Image.Image], torch.Tensor]:
    """``spec`` rendered with torchvision's per-image PIL transforms: a normalized (3, size, size) tensor."""
    interpolation = T.InterpolationMode.BICUBIC if spec.bicubic else T.InterpolationMode.BILINEAR
    steps: list[Callable] = [
        T.RandomResizedCrop(spec.size, scale=spec.crop_scale, interpolation=interpolation, antialias=True),
        T.RandomHorizontalFlip(p=spec.flip_prob),
    ]
    if spec.has_jitter:
        brightness, contrast, saturation, hue = spec.jitter
        jitter = T.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        steps.append(T.RandomApply([jitter], p=spec.jitter_prob))
    if spec.grayscale_prob > 0:
        steps.append(T.RandomGrayscale(p=spec.grayscale_prob))
    if spec.blur_prob > 0:
        steps.append(T.RandomApply([T.GaussianBlur(spec.blur_kernel_size, sigma=BLUR_SIGMA)], p=spec.blur_prob))
    if spec.solarize_prob > 0:
        steps.append(T.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=spec.solarize_prob))  # on uint8 PIL pixels
    steps += [T.ToTensor(), T.Normalize(norm.mean, norm.std)]
    return T.Compose(steps)


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
