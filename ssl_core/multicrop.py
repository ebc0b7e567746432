"""Multi-crop views: two global crops and several small local crops of one image.

The recipe is DINO's (Caron et al., 2021, https://arxiv.org/abs/2104.14294, sec. 3.1
and appendix; multi-crop from SwAV, https://arxiv.org/abs/2006.09882): bicubic random
resized crops, horizontal flip, color jitter (brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1 with probability 0.8), grayscale, and asymmetric blur and
solarization over the crops: blur with probability 1.0 on the first global crop,
0.1 on the second and 0.5 on the local crops, solarization on the second global
crop only.

Scaled for 32 px images (CIFAR-10), the defaults (:class:`~ssl_core.methods.recipes.MultiCropConfig`):

- global crops of the training image size with scale (0.4, 1.0), the DINO and
  lightly ``DINOTransform`` default;
- 6 local crops of half the global side (16 px at 32 px; DINO's 96/224 is about 0.43) with scale
  (0.05, 0.4), lightly's ``DINOTransform`` default count and scale. lightly's CIFAR-10
  benchmark uses no local crops at all (``n_local_views=0``); set
  ``num_local_crops=0`` to reproduce it;
- no blur, as in lightly's CIFAR-10 benchmarks: blurring a 32 px image destroys it;
- solarization 0.2 on the second global crop, kept as in that benchmark.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from ssl_core.augment import MultiView, Normalization, random_gaussian_blur
from ssl_core.methods.recipes import MultiCropConfig


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


def multicrop_transform(config: MultiCropConfig, global_size: int, norm: Normalization) -> MultiView:
    """2 global crops of ``global_size`` px, then ``num_local_crops`` local crops, of the same image.

    Example:
        >>> views = multicrop_transform(MultiCropConfig(), 32, Normalization())(image)
        >>> [v.shape[-1] for v in views]  # [32, 32, 16, 16, 16, 16, 16, 16]
    """
    global_blur_1, global_blur_2, local_blur = config.blur_probs
    first_global = crop_view(config, norm, global_size, config.global_crop_scale, global_blur_1, 0.0)
    second_global = crop_view(config, norm, global_size, config.global_crop_scale, global_blur_2, config.solarize_prob)
    local_size = config.local_side(global_size)
    local = crop_view(config, norm, local_size, config.local_crop_scale, local_blur, 0.0)
    return MultiView([first_global, second_global] + [local] * config.num_local_crops)
