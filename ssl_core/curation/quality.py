"""Per-image quality scores and flags: dark, overexposed, low information, blurry, odd size.

Each score is in one sentence, in the spirit of cleanvision's issue types
(designed from these definitions, not from its code):

- ``dark`` = 1 - the 99th percentile of luminance: an image is dark when even its
  brightest pixels are dark.
- ``overexposed`` = the 25th percentile of luminance: an image is overexposed when
  three quarters of its pixels are near white.
- ``low_information`` = 1 - the entropy of the 32-bin luminance histogram over its
  5-bit maximum: a blank image uses few grey levels (bins 8 levels wide, so that
  noise and JPEG artefacts of a few levels do not count as information).
- ``blurry`` = the blur effect of Crete, Dolmiere, Ladret and Nicolas, "The blur
  effect: perception and estimation with a new no-reference perceptual blur metric",
  Proc. SPIE 6492, Human Vision and Electronic Imaging XII (2007),
  https://hal.science/hal-00232709, https://doi.org/10.1117/12.702790: re-blur the image
  with a 1-D box filter and measure how much of its neighbour-pixel variation
  survives; a sharp image loses much of it, a blurry one little.
- ``odd_size`` = how many tolerances (4x in area, 2x in aspect ratio, or 3 robust
  standard deviations when the dataset varies more) an image's log-area or
  log-aspect lies from the dataset's median.

Luminance is ITU-R BT.601 luma (PIL's ``"L"`` mode) scaled to [0, 1]. The four
pixel scores are in [0, 1], higher is worse, and are computed on a copy whose
longer side is at most :data:`SCORE_SIDE` pixels, so their cost is bounded
whatever the image size (and blur that a thumbnail hides is not reported).

Example:
    >>> scores = pixel_quality_scores(rgb)  # rgb: (H, W, 3) uint8
    >>> flagged = flag_issues({issue: np.array([scores[issue]]) for issue in PIXEL_ISSUES}, QualityThresholds())
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ssl_core.curation.settings import PIXEL_ISSUES, QUALITY_ISSUES, QualityThresholds

__all__ = [
    "PIXEL_ISSUES",
    "QUALITY_ISSUES",
    "QualityThresholds",
    "flag_issues",
    "odd_size_scores",
    "pixel_quality_scores",
]

SCORE_SIDE = 128  # longer side of the copy scored: bounds the cost; CIFAR (32) and 128 px sets are scored as is
# The paper re-blurs full-size photos with 9 taps; on copies of at most 128 px (32 px for
# CIFAR) 5 taps separate a 1.5 px Gaussian blur from sharp images better.
BLUR_TAPS = 5
# The 25th, not the median: a product shot on white is mostly white, but its object
# usually fills more than a quarter of the frame.
OVEREXPOSED_PERCENTILE = 25.0
LUMA_BINS = 32  # of the low-information histogram


def pixel_quality_scores(rgb: np.ndarray | Image.Image) -> dict[str, float]:
    """Scores of the four :data:`PIXEL_ISSUES`, each in [0, 1], higher is worse.

    Args:
        rgb: (H, W, 3) uint8 RGB array, or a PIL image (any mode PIL converts to ``"L"``;
            passing the image avoids converting a large one to an array first).

    Raises:
        ValueError: if the array is not (H, W, 3) uint8 or the image is empty.
    """
    if isinstance(rgb, np.ndarray):
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
        image = Image.fromarray(rgb)
    else:
        image = rgb
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image must have pixels, got {image.width}x{image.height}")
    gray = image.convert("L")  # one channel before resizing: a third of the work
    longer = max(gray.size)
    if longer > SCORE_SIDE:
        size = (max(1, round(gray.width * SCORE_SIDE / longer)), max(1, round(gray.height * SCORE_SIDE / longer)))
        gray = gray.resize(size, Image.Resampling.BOX)
    luma = np.asarray(gray)  # (h, w) uint8
    histogram = np.bincount(luma.ravel(), minlength=256)  # (256,)
    return {
        "dark": 1.0 - _percentile(histogram, 99.0),
        "overexposed": _percentile(histogram, OVEREXPOSED_PERCENTILE),
        "low_information": 1.0 - _entropy_bits(histogram.reshape(LUMA_BINS, -1).sum(axis=1)) / math.log2(LUMA_BINS),
        "blurry": blur_effect(luma),
    }


def _percentile(histogram: np.ndarray, q: float) -> float:
    """The lowest grey level (in [0, 1]) at or below which q % of the pixels lie."""
    cumulative = np.cumsum(histogram)
    return float(np.searchsorted(cumulative, q / 100.0 * cumulative[-1])) / 255.0


def _entropy_bits(histogram: np.ndarray) -> float:
    p = histogram[histogram > 0] / histogram.sum()
    return float(-(p * np.log2(p)).sum())


def blur_effect(luma: np.ndarray, taps: int = BLUR_TAPS) -> float:
    """Crete et al.'s (2007) no-reference blur: 0 sharp, 1 blurry.

    Per direction: D_F = |neighbour differences| of the image, D_B = the same after a
    ``taps``-long box blur along that direction, V = max(0, D_F - D_B); the direction's
    blur is (sum D_F - sum V) / sum D_F, the share of variation the re-blur did not
    remove. The image's blur is the larger of the two directions'. A direction without
    variation has nothing to measure and is left out; an image without any is fully
    blurry (1).

    Args:
        luma: (H, W) grey levels.
        taps: length of the re-blur box filter (the paper's is 9, see :data:`BLUR_TAPS`).
    """
    image = np.asarray(luma, dtype=np.float64)
    # Transposed, the vertical direction is computed as rows too.
    per_direction = [_row_blur(image, taps), _row_blur(image.T, taps)]
    return max((blur for blur in per_direction if blur is not None), default=1.0)


def _row_blur(image: np.ndarray, taps: int) -> float | None:
    """Crete's blur along the rows of an (H, W) image; None when no row varies."""
    width = image.shape[1]
    # Edges repeated (np.pad does the same, several times slower on small images), one column
    # more in front: window sums are differences of the running sum.
    columns = np.clip(np.arange(-(taps // 2) - 1, width + taps - 1 - taps // 2), 0, width - 1)  # (W + taps,)
    cumulative = np.cumsum(image[:, columns], axis=1)  # (H, W + taps)
    blurred = (cumulative[:, taps:] - cumulative[:, :-taps]) / taps  # (H, W): mean of taps neighbours
    d_image = np.abs(image[:, 1:] - image[:, :-1])  # (H, W - 1)
    d_blurred = np.abs(blurred[:, 1:] - blurred[:, :-1])  # (H, W - 1)
    total = float(d_image.sum())
    if total == 0:
        return None
    removed = float(np.maximum(d_image - d_blurred, 0.0).sum())  # sum V: the variation the re-blur took away
    return (total - removed) / total


def odd_size_scores(
    widths: np.ndarray, heights: np.ndarray, area_factor: float = 4.0, aspect_factor: float = 2.0
) -> np.ndarray:
    """Per image, how far its size is from the dataset's: 1 at the tolerance, 0 at the median.

    The distance of log(area) from its median in units of log(area_factor), and of
    log(width / height) in units of log(aspect_factor), the larger of the two. When
    the dataset itself varies more, a unit is 3 robust standard deviations
    (1.4826 x the median absolute deviation) instead, so a varied web crawl is not
    flagged wholesale.

    Args:
        widths, heights: (N,) positive pixel sizes from the manifest.
        area_factor: an image this many times smaller or larger than the median area scores 1.
        aspect_factor: an aspect ratio this many times wider or taller than the median scores 1.

    Returns:
        (N,) float32 scores >= 0.

    Raises:
        ValueError: if the arrays differ in shape or hold a size that is not positive, or a factor is <= 1.
    """
    widths, heights = np.asarray(widths, dtype=np.float64), np.asarray(heights, dtype=np.float64)
    if widths.shape != heights.shape or widths.ndim != 1:
        raise ValueError(f"widths and heights must be (N,) arrays of one shape, got {widths.shape} {heights.shape}")
    if np.any(widths <= 0) or np.any(heights <= 0):
        raise ValueError("widths and heights must be positive")
    if area_factor <= 1 or aspect_factor <= 1:
        raise ValueError(f"area_factor and aspect_factor must be > 1, got {area_factor} and {aspect_factor}")
    if widths.size == 0:
        return np.zeros(0, dtype=np.float32)
    log_area, log_aspect = np.log(widths * heights), np.log(widths / heights)  # (N,), (N,)
    return np.maximum(
        _robust_distance(log_area, math.log(area_factor)), _robust_distance(log_aspect, math.log(aspect_factor))
    ).astype(np.float32)


def _robust_distance(values: np.ndarray, tolerance: float) -> np.ndarray:
    """|values - median| in units of max(tolerance, 3 robust standard deviations)."""
    deviation = np.abs(values - np.median(values))
    sigma = 1.4826 * float(np.median(deviation))  # the MAD's Gaussian-consistent scale
    return deviation / max(tolerance, 3.0 * sigma)


def flag_issues(scores: dict[str, np.ndarray], thresholds: QualityThresholds) -> dict[str, np.ndarray]:
    """Indices of the flagged images per issue, worst (highest score) first, ties by index.

    Args:
        scores: {issue: (N,) scores}; any subset of :data:`QUALITY_ISSUES`.
        thresholds: the score from which an image is flagged, per issue.

    Returns:
        {issue: (k,) int64 indices} for each issue in ``scores``.

    Raises:
        ValueError: if an issue is not one of :data:`QUALITY_ISSUES`.
    """
    flagged = {}
    for issue, values in scores.items():
        if issue not in QUALITY_ISSUES:
            raise ValueError(f"unknown quality issue {issue!r}; valid: {', '.join(QUALITY_ISSUES)}")
        values = np.asarray(values)
        indices = np.flatnonzero(values >= getattr(thresholds, issue))
        flagged[issue] = indices[np.argsort(-values[indices], kind="stable")].astype(np.int64)
    return flagged
