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

from ssl_core.augment import MultiView, Normalization, ViewSpec, pil_view
from ssl_core.methods.recipes import MultiCropConfig


def crop_spec(
    config: MultiCropConfig, size: int, scale: tuple[float, float], blur_prob: float, solarize_prob: float
) -> ViewSpec:
    """One multi-crop view: a bicubic random resized crop with DINO's color distortion."""
    s = config.jitter_strength
    return ViewSpec(
        size=size,
        crop_scale=scale,
        flip_prob=config.flip_prob,
        jitter=(0.8 * s, 0.8 * s, 0.4 * s, 0.2 * s),
        jitter_prob=config.jitter_prob if s > 0 else 0.0,
        grayscale_prob=config.grayscale_prob,
        blur_prob=blur_prob,
        solarize_prob=solarize_prob,
        bicubic=True,
    )


def multicrop_specs(config: MultiCropConfig, global_size: int) -> list[ViewSpec]:
    """2 global crops of ``global_size`` px, then ``num_local_crops`` local crops.

    Example:
        >>> [spec.size for spec in multicrop_specs(MultiCropConfig(), 32)]  # [32, 32, 16, 16, 16, 16, 16, 16]
    """
    global_blur_1, global_blur_2, local_blur = config.blur_probs
    first_global = crop_spec(config, global_size, config.global_crop_scale, global_blur_1, 0.0)
    second_global = crop_spec(config, global_size, config.global_crop_scale, global_blur_2, config.solarize_prob)
    local = crop_spec(config, config.local_side(global_size), config.local_crop_scale, local_blur, 0.0)
    return [first_global, second_global] + [local] * config.num_local_crops


def multicrop_transform(config: MultiCropConfig, global_size: int, norm: Normalization) -> MultiView:
    """:func:`multicrop_specs` rendered per PIL image: the list of views of one image."""
    return MultiView([pil_view(spec, norm) for spec in multicrop_specs(config, global_size)])
