"""Aligned pixel similarity: the check that turns neighbour candidates into near duplicates.

Embedding neighbours are candidates, not verdicts: at 32 px a 2-pixel shift moves
a thumbnail's cosine similarity to another image's range (measured in
docs/curation.md). So each candidate pair is compared on its pixels after
alignment: both images as 32x32 grayscale, the centre of one slid over the other
within +-4 pixels, at three zooms (1, 1.1, 1.2: a crop of a few pixels resized
back), and the best zero-normalized cross-correlation (ZNCC, Lewis 1995, "Fast
normalized cross-correlation") is the pair's similarity. ZNCC ignores brightness
and contrast changes, and the 32x32 rendition averages away re-compression noise
and light blur, so the score is near 1 for the same shot under mild edits and
lower for two different pictures however similar their layout.

All pairs of a batch are correlated at once with grouped convolutions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIDE = 32
MARGIN = 4  # largest shift searched, in pixels of the 32x32 rendition
ZOOMS = (1.0, 1.1, 1.2)
# Below this RMS contrast (about 5 grey levels) a picture is too flat to align: ZNCC
# would amplify its noise into a pattern (blank and blown-out images are quality issues).
MIN_CONTRAST = 0.02


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


def _zncc(images: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Best ZNCC of each template's centre slid over its image: (B, S, S) x (B, S, S) -> (B,)."""
    batch = len(images)
    centre = templates[:, MARGIN:-MARGIN, MARGIN:-MARGIN]  # (B, h, h)
    side = centre.shape[-1]
    centre = centre - centre.mean(dim=(1, 2), keepdim=True)
    template_norm = centre.flatten(1).norm(dim=1)  # (B,)
    unit = centre / template_norm.clamp_min(1e-6)[:, None, None]
    correlation = F.conv2d(images[None], unit[:, None], groups=batch)[0]  # (B, 2m+1, 2m+1)
    # The window's own norm after removing its mean, from box sums (Lewis's trick).
    box = torch.ones(1, 1, side, side, dtype=images.dtype)
    window_sum = F.conv2d(images[:, None], box)[:, 0]
    window_square_sum = F.conv2d((images * images)[:, None], box)[:, 0]
    window_norm = (window_square_sum - window_sum**2 / side**2).clamp_min(0).sqrt()
    zncc = correlation / window_norm.clamp_min(1e-6)
    best = zncc.flatten(1).max(dim=1).values.clamp(-1, 1)
    # A flat picture has no pattern to align: it matches nothing.
    flat = (template_norm < MIN_CONTRAST * side) | (window_norm.flatten(1).max(dim=1).values < MIN_CONTRAST * side)
    return torch.where(flat, torch.zeros_like(best), best)


@torch.no_grad()
def aligned_similarity(
    renditions: np.ndarray, first: np.ndarray, second: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """(P,) float32 aligned similarity of the pairs ``(first[p], second[p])`` of ``renditions`` (N, 32, 32) uint8.

    Symmetric: each image of a pair is matched over the other, zoomed or not, and the best score counts.
    """
    scores = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), batch_size):
        a = torch.from_numpy(renditions[first[start : start + batch_size]]).float() / 255
        b = torch.from_numpy(renditions[second[start : start + batch_size]]).float() / 255
        best = torch.full((len(a),), -1.0)
        for zoom in ZOOMS:
            za, zb = _zoom(a, zoom), _zoom(b, zoom)
            best = torch.maximum(best, torch.maximum(_zncc(a, zb), _zncc(b, za)))
        scores[start : start + len(a)] = best.numpy()
    return scores
