"""Planted quality problems: make a clean image dark, overexposed, blank or blurry.

The tests and the curation benchmark plant these into real images to measure
whether :mod:`ssl_core.curation.quality` flags them (recall) and leaves the clean
originals alone (false positives). Each takes an image and a ``numpy.random.Generator``
that draws the strength, and returns a new RGB image of the same size.

Example:
    >>> rng = np.random.default_rng(0)
    >>> planted = {name: make(image, rng) for name, make in PLANTED.items()}
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

DARK_GAIN = (0.05, 0.15)  # brightness kept: a night shot with the exposure far too short
CLIPPED_SHARE = (0.75, 0.95)  # share of pixels pushed to pure white: "most pixels clip"
FLARE = 16.0  # grey levels added before the gain, so that even black pixels rise and a mostly black image can clip
BLANK_NOISE = (0.5, 3.0)  # noise std in grey levels on a uniform colour: sensor noise on a lens cap or a wall
BLUR_RADIUS_AT_32 = (1.25, 1.75)  # Gaussian std in pixels for a 32 px image; scaled with the longer side


def make_dark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness scaled down to 5-15 %."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return _to_image(rgb * rng.uniform(*DARK_GAIN))


def make_overexposed(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A little flare, then exposure pushed up until 75-95 % of the pixels clip to white in every channel."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) + FLARE
    darkest_channel = rgb.min(axis=2)  # (H, W): a pixel turns white once its darkest channel clips
    # "lower" picks a pixel's own value, so at least the drawn share of pixels is >= the knee and clips.
    knee = np.quantile(darkest_channel, 1.0 - rng.uniform(*CLIPPED_SHARE), method="lower")
    return _to_image(rgb * (255.0 / float(knee)))


def make_blank(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The image's mean colour everywhere, plus slight Gaussian noise (0.5-3 grey levels)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    mean = rgb.reshape(-1, 3).mean(axis=0)  # (3,)
    noise = rng.normal(0.0, rng.uniform(*BLANK_NOISE), size=rgb.shape)
    return _to_image(mean + noise)


def make_blurry(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur with a std of 1.25-1.75 px per 32 px of the longer side."""
    radius = rng.uniform(*BLUR_RADIUS_AT_32) * max(image.size) / 32.0
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


# Which quality issue each planted problem should raise.
PLANTED: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "dark": make_dark,
    "overexposed": make_overexposed,
    "low_information": make_blank,
    "blurry": make_blurry,
}
