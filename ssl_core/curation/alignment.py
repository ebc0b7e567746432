"""Aligned pixel similarity: the check that turns neighbour candidates into near duplicates.

Embedding neighbours are candidates, not verdicts: at 32 px a 2-pixel shift moves
a thumbnail's cosine similarity to another image's range (measured in
docs/curation.md). So each candidate pair is compared on its pixels after
alignment: both images as 32x32 grayscale, the centre of one slid over the other
within +-4 pixels, at three zooms (1, 1.1, 1.2: a crop of a few pixels resized
back), and the best zero-normalized cross-correlation (ZNCC, Lewis 1995, "Fast
normalized cross-correlation") is the pair's similarity. ZNCC ignores brightness
and contrast changes, and the 32x32 rendition averages away re-compression noise
and light blur.

Both images are band-pass filtered first, by a difference of Gaussians (sigma 0.7
px minus sigma 4 px): natural images put most of their energy in the lowest
frequencies, so on raw pixels two different harbour scenes with the same horizon
correlate at 0.9; on the band-pass, the details have to match. The finest detail,
which a sub-pixel shift or a re-encode scrambles, is smoothed away too. Measured in
docs/curation.md: on raw pixels a third of the distinct CIFAR-10 pairs above 0.9 are
of different classes; on the band-pass none above the default 0.88.

All pairs of a batch are correlated at once, at every shift, by FFT.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIDE = 32
MARGIN = 4  # largest shift searched, in pixels of the 32x32 rendition
ZOOMS = (1.0, 1.1, 1.2)
BAND_PASS_SIGMAS = (0.7, 4.0)  # detail kept: finer than ~1/(2 pi 4), coarser than ~1/(2 pi 0.7) cycles/px
# Below this RMS band-pass contrast (about 1.3 grey levels) a picture has no detail to
# align: ZNCC would amplify its noise into a pattern (blank images are a quality issue).
MIN_CONTRAST = 0.005


def alignment_rendition(image: Image.Image) -> np.ndarray:
    """(32, 32) uint8 grayscale: what :func:`aligned_similarity` compares."""
    return np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.uint8)


def _zoom(images: torch.Tensor, zoom: float) -> torch.Tensor:
    """Crops (B, S, S) to the centre 1/zoom and resizes back to S x S."""
    if zoom == 1.0:
        return images
    cut = int(round(SIDE * (1 - 1 / zoom) / 2))
    centre = images[:, None, cut : SIDE - cut, cut : SIDE - cut]
    return F.interpolate(centre, size=(SIDE, SIDE), mode="bilinear", align_corners=False)[:, 0]


def _blur_matrix(sigma: float, size: int = SIDE) -> torch.Tensor:
    """(S, S) matrix G with G @ x = x blurred along one axis by a Gaussian, edges replicated."""
    radius = int(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    matrix = torch.zeros(size, size)
    for row in range(size):
        for offset, weight in zip(range(-radius, radius + 1), taps, strict=True):
            matrix[row, min(max(row + offset, 0), size - 1)] += weight
    return matrix


_FINE, _COARSE = (_blur_matrix(sigma) for sigma in BAND_PASS_SIGMAS)


def band_pass(images: torch.Tensor) -> torch.Tensor:
    """(B, S, S) difference of Gaussians (separable, edges replicated): the mid-scale detail of each image."""
    # Small matrix products, far faster than padded convolutions on 32x32 images.
    return _FINE @ images @ _FINE.T - _COARSE @ images @ _COARSE.T


def _box_sums(images: torch.Tensor, side: int) -> torch.Tensor:
    """Sums of every side x side window at the (2m+1)^2 offsets, from an integral image: (B, 2m+1, 2m+1)."""
    integral = F.pad(images.cumsum(dim=1).cumsum(dim=2), (1, 0, 1, 0))  # (B, S+1, S+1)
    offsets = SIDE - side + 1
    return (
        integral[:, side : side + offsets, side : side + offsets]
        - integral[:, :offsets, side : side + offsets]
        - integral[:, side : side + offsets, :offsets]
        + integral[:, :offsets, :offsets]
    )


def _zncc(images: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Best ZNCC of each template's centre slid over its image: (B, S, S) x (B, S, S) -> (B,)."""
    centre = templates[:, MARGIN:-MARGIN, MARGIN:-MARGIN]  # (B, h, h)
    side = centre.shape[-1]
    centre = centre - centre.mean(dim=(1, 2), keepdim=True)
    template_norm = centre.flatten(1).norm(dim=1)  # (B,)
    unit = centre / template_norm.clamp_min(1e-6)[:, None, None]
    # Correlation at every offset by FFT: the centre padded to S x S; offsets up to 2m
    # never wrap around, as h + 2m = S.
    padded = F.pad(unit, (0, SIDE - side, 0, SIDE - side))
    spectrum = torch.fft.rfft2(images) * torch.fft.rfft2(padded).conj()
    offsets = SIDE - side + 1
    correlation = torch.fft.irfft2(spectrum, s=(SIDE, SIDE))[:, :offsets, :offsets]  # (B, 2m+1, 2m+1)
    # The window's own norm after removing its mean (the template is zero-mean, so the
    # correlation needs no mean removed): Lewis's box sums.
    window_sum, window_square_sum = _box_sums(images, side), _box_sums(images * images, side)
    window_norm = (window_square_sum - window_sum**2 / side**2).clamp_min(0).sqrt()
    zncc = correlation / window_norm.clamp_min(1e-6)
    best = zncc.flatten(1).max(dim=1).values.clamp(-1, 1)
    # A flat picture has no pattern to align: it matches nothing.
    flat = (template_norm < MIN_CONTRAST * side) | (window_norm.flatten(1).max(dim=1).values < MIN_CONTRAST * side)
    return torch.where(flat, torch.zeros_like(best), best)


@torch.no_grad()
def aligned_similarity(
    renditions: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    batch_size: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(P,) float32 aligned similarity of the pairs ``(first[p], second[p])`` of ``renditions`` (N, 32, 32) uint8.

    Symmetric: each image of a pair is matched over the other, zoomed or not, and the best score counts.
    ``on_batch`` is called with the number of pairs after each batch (progress bars).
    """
    scores = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), batch_size):
        a = torch.from_numpy(renditions[first[start : start + batch_size]]).float() / 255
        b = torch.from_numpy(renditions[second[start : start + batch_size]]).float() / 255
        detail_a, detail_b = band_pass(a), band_pass(b)
        best = torch.full((len(a),), -1.0)
        for zoom in ZOOMS:
            za, zb = band_pass(_zoom(a, zoom)), band_pass(_zoom(b, zoom))
            best = torch.maximum(best, torch.maximum(_zncc(detail_a, zb), _zncc(detail_b, za)))
        scores[start : start + len(a)] = best.numpy()
        if on_batch is not None:
            on_batch(len(a))
    return scores
