"""Random views of a whole batch at once, on the device, with random parameters drawn per image.

:class:`BatchViews` renders the same :class:`~ssl_core.augment.ViewSpec` as
:func:`~ssl_core.augment.pil_view`, but for a (B, 3, H, W) uint8 batch in a handful
of tensor operations instead of B PIL pipelines on the host. Every random choice
follows torchvision's per-image law, drawn independently for every image (batched
v2 transforms and some GPU libraries draw once per batch, or share the color-jitter
order across it):

- random resized crop: ``RandomResizedCrop.get_params``' law (area fraction in
  ``crop_scale``, log-uniform aspect ratio in (3/4, 4/3), 10 tries, then the whole
  image), resampled with ``roi_align``, which averages ``ceil(crop/size)`` bilinear
  samples per output pixel and so antialiases downscaling;
- horizontal flip;
- color jitter applied with ``jitter_prob``: brightness, contrast and saturation
  factors uniform in ``[max(0, 1 - x), 1 + x]``, hue shift uniform in
  ``[-h, h]``, in an order drawn per image (``ColorJitter``'s ``randperm(4)``);
- grayscale, Gaussian blur (sigma uniform in [0.1, 2], reflect padding), solarization.

All of a view's random parameters are functions of one (B, n) block of uniform draws
(:func:`view_uniforms`, one ``torch.rand`` per view spec); the rest is arithmetic, which
``torch.compile`` fuses with the rendering (:meth:`BatchViews.compile`), so a compiled
view launches one kernel for its randomness rather than one per parameter.

Known differences from the PIL path: it works on floats, so nothing is rounded to
uint8 between the steps, and crops are resized bilinearly even where the spec asks
for bicubic (DINO's crops). ``tests/ssl_core/test_batch_augment.py`` compares the
distributions of per-image statistics of both on real images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ssl_core.augment import BLUR_SIGMA, SOLARIZE_THRESHOLD, Normalization, ViewSpec

# torchvision's RandomResizedCrop defaults.
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale and PIL's convert("L").
LUMA = (0.299, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class Uniforms:
    """A (B, n) block of uniform [0, 1) draws, one row per image, handed out a few columns at a time.

    All of a view's random parameters are functions of one such block, drawn in one call
    (:func:`view_uniforms`): the functions are pure tensor arithmetic, so ``torch.compile``
    fuses them into the rendering, and the only kernel left outside the graph is the draw.
    """

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values
        self.taken = 0

    def take(self, columns: int) -> torch.Tensor:
        """The next ``columns`` columns, (B, columns)."""
        if self.taken + columns > self.values.shape[1]:
            raise ValueError(f"{self.values.shape[1]} uniform draws per image are too few: {self.taken + columns} used")
        block = self.values[:, self.taken : self.taken + columns]
        self.taken += columns
        return block

    def column(self) -> torch.Tensor:
        """The next column, (B,): one uniform [0, 1) draw per image."""
        return self.take(1).squeeze(1)

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """(B,) draws uniform in [low, high), from the next column."""
        return self.column() * (high - low) + low

    def bernoulli(self, p: float) -> torch.Tensor:
        """(B,) booleans, each True with probability ``p`` (as ``torch.rand(1) < p`` in torchvision)."""
        return self.column() < p

    def check_all_taken(self) -> None:
        """Raises if columns were left over: the count of :func:`view_uniform_count` and the decoding disagree."""
        if self.taken != self.values.shape[1]:
            raise ValueError(f"{self.values.shape[1]} uniform draws per image, {self.taken} used")


def uniform_block(count: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    """(count, columns) uniform draws on the generator's device, in one kernel.

    Drawn a column at a time (the transpose of a (columns, count) draw): a spec with one more step at the end
    draws the same parameters for the steps before it, so two specs can be compared view for view.
    """
    return torch.rand((columns, count), generator=generator, device=generator.device).T


def draw_uniforms(count: int, columns: int, generator: torch.Generator) -> Uniforms:
    """:func:`uniform_block`, ready to be handed out."""
    return Uniforms(uniform_block(count, columns, generator))


# Per image: CROP_TRIES area fractions and as many aspect ratios, then the top and left edges.
CROP_UNIFORMS = 2 * CROP_TRIES + 2


def crop_boxes_from(uniforms: Uniforms, height: int, width: int, scale: tuple[float, float]) -> torch.Tensor:
    """(B, 4) crop boxes ``(top, left, height, width)`` by RandomResizedCrop's law, from CROP_UNIFORMS columns.

    All ``CROP_TRIES`` tries are drawn at once; each image keeps its first one that
    fits, and an image with none gets the whole image (its aspect ratio, 1 for
    the square images stored here, lies inside ``CROP_RATIO``).
    """
    area = height * width
    target_area = area * (uniforms.take(CROP_TRIES) * (scale[1] - scale[0]) + scale[0])
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = (uniforms.take(CROP_TRIES) * (log_high - log_low) + log_low).exp()
    crop_w = (target_area * ratio).sqrt().round()
    crop_h = (target_area / ratio).sqrt().round()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first try that fits (0 if none)
    any_fits = fits.any(dim=1)
    crop_w = torch.where(any_fits, crop_w.gather(1, first).squeeze(1), torch.full_like(ratio[:, 0], width))
    crop_h = torch.where(any_fits, crop_h.gather(1, first).squeeze(1), torch.full_like(ratio[:, 0], height))
    # torch.randint(0, n + 1) per image, as a floor of a uniform draw.
    top = (uniforms.column() * (height - crop_h + 1)).floor()
    left = (uniforms.column() * (width - crop_w + 1)).floor()
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def crop_boxes(
    count: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """(count, 4) crop boxes ``(top, left, height, width)`` drawn by RandomResizedCrop's law, one per image."""
    uniforms = draw_uniforms(count, CROP_UNIFORMS, generator)
    return crop_boxes_from(uniforms, height, width, scale)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box resized to ``size`` x ``size``: (B, C, H, W) float -> (B, C, size, size)."""
    top, left, crop_h, crop_w = boxes.unbind(dim=1)
    index = torch.arange(len(images), device=images.device, dtype=images.dtype)
    # roi_align boxes are (index, x1, y1, x2, y2) in pixel edges; aligned=True samples pixel centers,
    # as F.interpolate(align_corners=False) does.
    rois = torch.stack([index, left, top, left + crop_w, top + crop_h], dim=1).to(images.dtype)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = images.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, clamped to [0, 1], with a (B,) ``factor``."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = images.unbind(dim=1)
    max_c, _ = images.max(dim=1)
    min_c, _ = images.min(dim=1)
    delta = max_c - min_c
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        max_c == r,
        ((g - b) / safe_delta) % 6,
        torch.where(max_c == g, (b - r) / safe_delta + 2, (r - g) / safe_delta + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue)) % 1.0
    saturation = torch.where(
        max_c > 0, delta / torch.where(max_c > 0, max_c, torch.ones_like(max_c)), torch.zeros_like(max_c)
    )
    return torch.stack([hue, saturation, max_c], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    hue, saturation, value = hsv.unbind(dim=1)
    # f(n) = v - v s max(0, min(k, 4 - k, 1)), k = (n + 6 h) mod 6, for n = 5, 3, 1 (R, G, B).
    # n = 5, 3, 1 made on the device (torch.tensor([5, 3, 1], device=...) copies from the host and waits for it).
    n = (5 - 2 * torch.arange(3, device=hsv.device, dtype=hsv.dtype)).view(1, 3, 1, 1)
    k = (n + 6 * hue.unsqueeze(1)) % 6
    weight = torch.minimum(k, 4 - k).clamp(0, 1)
    return value.unsqueeze(1) - (value * saturation).unsqueeze(1) * weight


def shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates each image's hue by its ``shift`` (a fraction of the color wheel, (B,))."""
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


@dataclass(frozen=True)
class JitterDraws:
    """Per-image color-jitter parameters: whether it applies, the order of the four operations, the factors."""

    applied: torch.Tensor  # (B,) bool
    order: torch.Tensor  # (B, 4): operation at each position, ColorJitter's randperm(4)
    factors: torch.Tensor  # (B, 3): brightness, contrast and saturation factors
    hue_shift: torch.Tensor  # (B,): a fraction of the color wheel


# Per image: whether it applies, four keys whose order is the operations' order, three factors, the hue shift.
JITTER_UNIFORMS = 1 + 4 + 3 + 1


def color_jitter_from(uniforms: Uniforms, strengths: tuple[float, float, float, float], p: float) -> JitterDraws:
    """torchvision's ``RandomApply([ColorJitter(*strengths)], p)`` parameters, from JITTER_UNIFORMS columns.

    Factors are uniform in ``[max(0, 1 - x), 1 + x]``, the hue shift in ``[-h, h]``.
    """
    applied = uniforms.bernoulli(p)
    order = uniforms.take(4).argsort(dim=1)  # randperm(4) per image: the ranks of four uniform keys
    factors = [uniforms.uniform(max(0.0, 1 - strength), 1 + strength) for strength in strengths[:3]]
    hue_shift = uniforms.uniform(-strengths[3], strengths[3])
    return JitterDraws(applied, order, torch.stack(factors, dim=1), hue_shift)


def apply_color_jitter(
    images: torch.Tensor, strengths: tuple[float, float, float, float], draws: JitterDraws
) -> torch.Tensor:
    """Applies drawn color jitter; no random draws, so it compiles into a few fused kernels.

    An image left alone gets the identity factor (1, or a hue shift of 0) for every
    operation, which leaves its pixels exactly unchanged, so the whole batch takes
    the same four steps.
    """
    for position in range(4):
        operation = draws.order[:, position]
        for op in (BRIGHTNESS, CONTRAST, SATURATION):
            if strengths[op] == 0:
                continue
            factor = draws.factors[:, op]
            factor = torch.where(draws.applied & (operation == op), factor, torch.ones_like(factor))
            if op == BRIGHTNESS:
                images = blend(images, torch.zeros_like(images), factor)
            elif op == CONTRAST:
                images = blend(images, grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factor)
            else:
                images = blend(images, grayscale(images), factor)
        if strengths[HUE] > 0:
            chosen = (draws.applied & (operation == HUE)).view(-1, 1, 1, 1)
            images = torch.where(chosen, shift_hue(images, draws.hue_shift), images)
    return images


def color_jitter(
    images: torch.Tensor, strengths: tuple[float, float, float, float], p: float, generator: torch.Generator
) -> torch.Tensor:
    """torchvision's ``RandomApply([ColorJitter(*strengths)], p)``, with factors and order drawn per image."""
    draws = color_jitter_from(draw_uniforms(len(images), JITTER_UNIFORMS, generator), strengths, p)
    return apply_color_jitter(images, strengths, draws)


# Per image: whether it is blurred, and its sigma.
BLUR_UNIFORMS = 2


def blur_sigmas_from(uniforms: Uniforms, p: float) -> torch.Tensor:
    """Per-image sigma of ``RandomApply([GaussianBlur(k, BLUR_SIGMA)], p)``: uniform in BLUR_SIGMA, 0 = not blurred."""
    blurred = uniforms.bernoulli(p)
    sigma = uniforms.uniform(*BLUR_SIGMA)
    return torch.where(blurred, sigma, torch.zeros_like(sigma))


def apply_gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blurs each image with its own sigma (reflect padding); images with sigma 0 are left as they are."""
    count, channels, height, width = images.shape
    safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    offsets = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - (kernel_size - 1) / 2
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / safe_sigma.view(-1, 1)) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B C, k)
    pad = kernel_size // 2
    # Separable blur as grouped convolutions, one group per image channel.
    flat = F.pad(images.reshape(1, count * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernels.view(-1, 1, 1, kernel_size), groups=count * channels)
    flat = F.conv2d(flat, kernels.view(-1, 1, kernel_size, 1), groups=count * channels)
    return torch.where((sigma > 0).view(-1, 1, 1, 1), flat.view(count, channels, height, width), images)


@dataclass(frozen=True)
class ViewDraws:
    """Every random parameter of one view of each image of a batch; None where the spec skips the step."""

    boxes: torch.Tensor  # (B, 4) crop boxes (top, left, height, width)
    flipped: torch.Tensor  # (B,) bool
    jitter: JitterDraws | None
    gray: torch.Tensor | None  # (B,) bool
    blur_sigma: torch.Tensor | None  # (B,), 0 = not blurred
    solarized: torch.Tensor | None  # (B,) bool


def view_uniform_count(spec: ViewSpec) -> int:
    """How many uniform draws per image :func:`view_draws_from` decodes for ``spec``."""
    count = CROP_UNIFORMS + 1  # the crop, the flip
    count += JITTER_UNIFORMS if spec.has_jitter else 0
    count += 1 if spec.grayscale_prob > 0 else 0
    count += BLUR_UNIFORMS if spec.blur_prob > 0 else 0
    count += 1 if spec.solarize_prob > 0 else 0
    return count


def view_uniforms(count: int, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
    """(count, :func:`view_uniform_count`) uniform draws: all a view's randomness, in one kernel."""
    return uniform_block(count, view_uniform_count(spec), generator)


def view_draws_from(uniforms: torch.Tensor, height: int, width: int, spec: ViewSpec) -> ViewDraws:
    """A view's parameters for each row of :func:`view_uniforms`, in the order the steps apply them.

    Pure tensor arithmetic on the draws (no generator), so it compiles with the rendering.
    """
    columns = Uniforms(uniforms)
    boxes = crop_boxes_from(columns, height, width, spec.crop_scale)
    flipped = columns.bernoulli(spec.flip_prob)
    jitter = color_jitter_from(columns, spec.jitter, spec.jitter_prob) if spec.has_jitter else None
    gray = columns.bernoulli(spec.grayscale_prob) if spec.grayscale_prob > 0 else None
    sigma = blur_sigmas_from(columns, spec.blur_prob) if spec.blur_prob > 0 else None
    solarized = columns.bernoulli(spec.solarize_prob) if spec.solarize_prob > 0 else None
    columns.check_all_taken()
    return ViewDraws(boxes, flipped, jitter, gray, sigma, solarized)


def draw_view(count: int, height: int, width: int, spec: ViewSpec, generator: torch.Generator) -> ViewDraws:
    """Draws a view's parameters for ``count`` images of ``height`` x ``width``."""
    return view_draws_from(view_uniforms(count, spec, generator), height, width, spec)


def apply_view(images: torch.Tensor, spec: ViewSpec, draws: ViewDraws) -> torch.Tensor:
    """Renders drawn views of a (B, 3, H, W) uint8 batch as floats in [0, 1] (not normalized).

    Deterministic given ``draws``: the part of a view that ``torch.compile`` fuses.
    """
    pixels = images.float() / 255
    views = resized_crops(pixels, draws.boxes, spec.size)
    views = torch.where(draws.flipped.view(-1, 1, 1, 1), views.flip(-1), views)
    if draws.jitter is not None:
        views = apply_color_jitter(views, spec.jitter, draws.jitter)
    if draws.gray is not None:
        views = torch.where(draws.gray.view(-1, 1, 1, 1), grayscale(views).expand_as(views), views)
    if draws.blur_sigma is not None:
        views = apply_gaussian_blur(views, spec.blur_kernel_size, draws.blur_sigma)
    if draws.solarized is not None:
        solarize = draws.solarized.view(-1, 1, 1, 1) & (views >= SOLARIZE_THRESHOLD / 255)
        views = torch.where(solarize, 1 - views, views)
    return views


def render_view(images: torch.Tensor, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
    """One random view of every image of a (B, 3, H, W) uint8 batch, as floats in [0, 1] (not normalized)."""
    count, _, height, width = images.shape
    return apply_view(images, spec, draw_view(count, height, width, spec, generator))


def normalized_view(
    images: torch.Tensor, spec: ViewSpec, uniforms: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """The views that ``uniforms`` (:func:`view_uniforms`) draw, normalized: what :class:`BatchViews` compiles."""
    _, _, height, width = images.shape
    return (apply_view(images, spec, view_draws_from(uniforms, height, width, spec)) - mean) / std


class BatchViews:
    """Random views of every image of a uint8 batch, normalized: a batched :class:`~ssl_core.augment.MultiView`.

    Args:
        specs: one :class:`ViewSpec` per view, in the order the method expects them.
        normalization: mean and std applied to the [0, 1] pixels.
    """

    def __init__(self, specs: list[ViewSpec], normalization: Normalization) -> None:
        if not specs:
            raise ValueError("BatchViews needs at least one view spec.")
        self.specs = list(specs)
        self.normalization = normalization
        self._render = normalized_view
        self._mean_std: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def compile(self, mode: str | None = None) -> None:
        """Renders through ``torch.compile``: turning the draws into parameters and the views' dozens of
        elementwise steps become a few kernels.

        Only the draw itself stays eager, one ``torch.rand`` per spec (a compiled graph cannot take a
        ``torch.Generator``), so the views are the same as uncompiled, up to float rounding. ``mode`` is
        ``torch.compile``'s (``"reduce-overhead"`` replays CUDA graphs).
        """
        self._render = torch.compile(normalized_view, dynamic=False, mode=mode)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """(B, 3, H, W) uint8 on the generator's device -> one (B, 3, s, s) float tensor per spec.

        Views of the same spec (SimCLR's two, DINO's local crops) are rendered as one
        batch of stacked copies: every draw is per image anyway, and at 32 px a GPU
        spends the augmentation's time launching kernels, not running them.
        """
        mean, std = self._normalization_on(images.device)
        positions: dict[ViewSpec, list[int]] = {}
        for position, spec in enumerate(self.specs):
            positions.setdefault(spec, []).append(position)
        views: list[torch.Tensor] = [images] * len(self.specs)  # placeholders, all replaced below
        for spec, same in positions.items():
            copies = images.repeat(len(same), 1, 1, 1) if len(same) > 1 else images
            uniforms = view_uniforms(len(copies), spec, generator)
            rendered = self._render(copies, spec, uniforms, mean, std)
            for position, view in zip(same, rendered.split(len(images)), strict=True):
                views[position] = view
        return views

    def _normalization_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, 1, 1) mean and std on ``device``, copied there once: a copy from the host every
        batch would make the host wait for the GPU every step."""
        if device not in self._mean_std:
            self._mean_std[device] = tuple(
                torch.tensor(values, device=device).view(1, 3, 1, 1)
                for values in (self.normalization.mean, self.normalization.std)
            )
        return self._mean_std[device]
