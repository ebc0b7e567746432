"""Curation's settings with their defaults: plain dataclasses, no numpy.

``tasks/params.py`` validates ``params.yaml``'s ``curate:`` section with them, so
every stage's schema can load without importing the curation algorithms (whose
edits must re-run the curate stage, and only it).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

PIXEL_ISSUES: tuple[str, ...] = ("dark", "overexposed", "low_information", "blurry")  # computed from pixels
QUALITY_ISSUES: tuple[str, ...] = (*PIXEL_ISSUES, "odd_size")  # odd_size comes from the manifest's sizes
SELECTION_STRATEGIES: tuple[str, ...] = ("kcenter", "typicality", "random")  # see ssl_core.curation.selection


@dataclass(frozen=True)
class QualityThresholds:
    """An image is flagged for an issue when its score is >= the issue's threshold.

    The defaults were chosen on problems planted (:mod:`benchmarks.planted`) into
    real CIFAR-10 (32 px) and Imagenette (128 px) images: each flags all planted dark,
    overexposed and blank images and nearly all blurry ones, and few clean originals.
    """

    dark: float = 0.8  # brightest pixels at most 20 % grey; planted ones are at most 15 %
    overexposed: float = 0.9
    low_information: float = 0.75  # at most 1.25 bits of the 5: noise around one grey level uses about 1
    blurry: float = 0.6
    odd_size: float = 1.0  # at the tolerance of odd_size_scores: 4x in area or 2x in aspect

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, numbers.Real) or math.isnan(value):
                raise ValueError(f"threshold {field.name} must be a number, got {value!r}")
