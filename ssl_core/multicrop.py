"""Multi-crop views: two global crops and several small local crops of one image.

The recipe is DINO's (Caron et al., 2021, https://arxiv.org/abs/2104.14294, sec. 3.1
and appendix; multi-crop from SwAV, https://arxiv.org/abs/2006.09882): bicubic random
resized crops, horizontal flip, color jitter (brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1 with probability 0.8), grayscale, and asymmetric blur and
solarization over the crops: blur with probability 1.0 on the first global crop,
0.1 on the second and 0.5 on the local crops, solarization on the second global
crop only.

Scaled for 32 px images (CIFAR-10), the defaults here:

- global crops 32 px (the whole image size) with scale (0.4, 1.0), the DINO and
  lightly ``DINOTransform`` default;
- 6 local crops of 16 px (half the global side, as 96/224 is about 0.43) with scale
  (0.05, 0.4), lightly's ``DINOTransform`` default count and scale. lightly's CIFAR-10
  benchmark uses no local crops at all (``n_local_views=0``); set
  ``num_local_crops=0`` to reproduce it;
- no blur, as in lightly's CIFAR-10 benchmarks: blurring a 32 px image destroys it;
- solarization 0.2 on the second global crop, kept as in that benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from ssl_core.augment import MultiView, Normalization, random_gaussian_blur


@dataclass(frozen=True)
class MultiCropConfig:
    """DINO's multi-crop augmentation.

    Attributes:
        global_size: side of the two global crops, in pixels.
        local_size: side of the local crops, in pixels.
        num_local_crops: number of local crops, >= 0.
        global_crop_scale: (min, max) area fraction of a global crop.
        local_crop_scale: (min, max) area fraction of a local crop.
        jitter_strength: s; brightness 0.8 s, contrast 0.8 s, saturation 0.4 s,
            hue 0.2 s (lightly's ``cj_strength``; 0.5 gives DINO's values).
        jitter_prob: probability of color jitter.
        grayscale_prob: probability of converting to grayscale.
        flip_prob: probability of a horizontal flip.
        blur_probs: Gaussian blur probability of (global crop 1, global crop 2, local
            crops); DINO's (1.0, 0.1, 0.5) is for 224 px images.
        solarize_prob: solarization probability of the second global crop.

    Raises:
        ValueError: on sizes < 1, a negative crop count, a probability outside
            [0, 1] or a crop scale outside (0, 1].
    """

    global_size: int = 32
    local_size: int = 16  # half the global side, as DINO's 96 px for 224 px
    num_local_crops: int = 6  # lightly DINOTransform's default; the paper uses 6-10
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    jitter_strength: float = 0.5
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    flip_prob: float = 0.5
    blur_probs: tuple[float, float, float] = (0.0, 0.0, 0.0)  # no blur at 32 px
    solarize_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.global_size < 1 or self.local_size < 1:
            raise ValueError(f"crop sizes must be >= 1, got global {self.global_size}, local {self.local_size}")
        if self.num_local_crops < 0:
            raise ValueError(f"num_local_crops must be >= 0, got {self.num_local_crops}")
        for name in ("global_crop_scale", "local_crop_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(low, high)}")
        if len(self.blur_probs) != 3:
            raise ValueError(f"blur_probs needs 3 values (global 1, global 2, local), got {self.blur_probs}")
        probabilities = {
            "jitter_prob": self.jitter_prob,
            "grayscale_prob": self.grayscale_prob,
            "flip_prob": self.flip_prob,
            "solarize_prob": self.solarize_prob,
            **{f"blur_probs[{i}]": p for i, p in enumerate(self.blur_probs)},
        }
        for name, p in probabilities.items():
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")

    @property
    def num_views(self) -> int:
        return 2 + self.num_local_crops


def crop_view(
    config: MultiCropConfig,
    norm: Normalization,
    size: int,
    scale: tuple[float, float],
    blur_prob: float,
    solarize_prob: float,
) -> Callable[[Image.Image], torch.Tensor]:
    """One random crop of a PIL image as a normalized (3, size, size) float tensor."""
    s = config.jitter_strength
    steps: list[Callable] = [
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.RandomHorizontalFlip(p=config.flip_prob),
    ]
    if s > 0 and config.jitter_prob > 0:
        jitter = T.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.4 * s, hue=0.2 * s)
        steps.append(T.RandomApply([jitter], p=config.jitter_prob))
    if config.grayscale_prob > 0:
        steps.append(T.RandomGrayscale(p=config.grayscale_prob))
    if blur_prob > 0:
        steps.append(random_gaussian_blur(size, blur_prob))
    if solarize_prob > 0:
        steps.append(T.RandomSolarize(threshold=128, p=solarize_prob))  # on uint8 PIL pixels
    steps += [T.ToTensor(), T.Normalize(norm.mean, norm.std)]
    return T.Compose(steps)


def multicrop_transform(config: MultiCropConfig, norm: Normalization) -> MultiView:
    """2 global crops, then ``num_local_crops`` local crops, of the same image.

    Example:
        >>> views = multicrop_transform(MultiCropConfig(), Normalization())(image)
        >>> [v.shape[-1] for v in views]  # [32, 32, 16, 16, 16, 16, 16, 16]
    """
    global_blur_1, global_blur_2, local_blur = config.blur_probs
    first_global = crop_view(config, norm, config.global_size, config.global_crop_scale, global_blur_1, 0.0)
    second_global = crop_view(
        config, norm, config.global_size, config.global_crop_scale, global_blur_2, config.solarize_prob
    )
    local = crop_view(config, norm, config.local_size, config.local_crop_scale, local_blur, 0.0)
    return MultiView([first_global, second_global] + [local] * config.num_local_crops)
