"""Quality scores on real CIFAR-10 images, with problems planted into them (benchmarks.planted)."""

from __future__ import annotations

import dataclasses
import io
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageFilter

from benchmarks.planted import PLANTED
from ssl_core.curation.quality import (
    PIXEL_ISSUES,
    QUALITY_ISSUES,
    QualityThresholds,
    blur_effect,
    flag_issues,
    odd_size_scores,
    pixel_quality_scores,
)
from tests.datasets import SHIPPED

NUM_IMAGES = 200  # 20 per class: enough for rates of a few percent, scored in well under a second


@pytest.fixture(scope="module")
def cifar_images() -> list[Image.Image]:
    """The first NUM_IMAGES/10 train images of each class of the shipped CIFAR-10 subset."""
    per_class = NUM_IMAGES // 10
    images = []
    with tarfile.open(SHIPPED.path, "r:gz") as tar:
        for member in tar:
            name = member.name.split("/")  # <top>/<split>/<class>/NNNN.jpg
            if member.isfile() and name[1] == "train" and int(name[3].removesuffix(".jpg")) < per_class:
                images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    assert len(images) == NUM_IMAGES
    return images


def scores_of(images: list[Image.Image]) -> dict[str, np.ndarray]:
    rows = [pixel_quality_scores(np.asarray(image)) for image in images]
    return {issue: np.array([row[issue] for row in rows]) for issue in PIXEL_ISSUES}


def jpeg_roundtrip(image: Image.Image) -> Image.Image:
    """As a planted corpus stores them."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    return Image.open(buffer).convert("RGB")


def test_issue_lists_and_thresholds_agree():
    assert QUALITY_ISSUES == ("dark", "overexposed", "low_information", "blurry", "odd_size")
    assert PIXEL_ISSUES == QUALITY_ISSUES[:4]
    assert tuple(field.name for field in dataclasses.fields(QualityThresholds)) == QUALITY_ISSUES
    assert set(PLANTED) == set(PIXEL_ISSUES)
    with pytest.raises(ValueError, match="blurry"):
        QualityThresholds(blurry=float("nan"))


def test_planted_problems_are_flagged_and_their_originals_mostly_not(cifar_images):
    thresholds = QualityThresholds()
    clean = flag_issues(scores_of(cifar_images), thresholds)
    rng = np.random.default_rng(0)
    for issue, make in PLANTED.items():
        planted = [jpeg_roundtrip(make(image, rng)) for image in cifar_images]
        assert all(p.size == image.size for p, image in zip(planted, cifar_images, strict=True))
        recall = len(flag_issues(scores_of(planted), thresholds)[issue]) / NUM_IMAGES
        assert recall >= (0.9 if issue == "blurry" else 1.0), issue
        # Measured on all of CIFAR-10: at most 0.4 % of the clean images per issue.
        assert len(clean[issue]) <= 0.02 * NUM_IMAGES, issue


def test_scores_lie_in_the_unit_interval(cifar_images):
    rng = np.random.default_rng(0)
    extremes = [
        np.zeros((32, 32, 3), np.uint8),
        np.full((32, 32, 3), 255, np.uint8),
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        rng.integers(0, 256, (1, 40, 3), dtype=np.uint8),
        rng.integers(0, 256, (300, 7, 3), dtype=np.uint8),
    ]
    planted = [make(image, rng) for image in cifar_images[:20] for make in PLANTED.values()]
    for rgb in [*extremes, *map(np.asarray, cifar_images), *map(np.asarray, planted)]:
        scores = pixel_quality_scores(rgb)
        assert set(scores) == set(PIXEL_ISSUES)
        assert all(0.0 <= score <= 1.0 for score in scores.values()), (rgb.shape, scores)


def test_solid_black_is_dark_and_low_information_but_not_overexposed():
    flagged = _flags_of_one(np.zeros((32, 32, 3), np.uint8))
    assert flagged["dark"] and flagged["low_information"] and not flagged["overexposed"]
    scores = pixel_quality_scores(np.zeros((32, 32, 3), np.uint8))
    assert scores["dark"] == 1.0 and scores["low_information"] == 1.0 and scores["overexposed"] == 0.0


def test_solid_white_is_overexposed_and_not_dark():
    flagged = _flags_of_one(np.full((32, 32, 3), 255, np.uint8))
    assert flagged["overexposed"] and flagged["low_information"] and not flagged["dark"]


def test_noise_is_neither_low_information_nor_blurry():
    grey_noise = np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)
    noise = np.repeat(grey_noise, 3, axis=2)  # grey, so that luminance is uniform too
    scores = pixel_quality_scores(noise)
    assert scores["low_information"] < 0.01  # all 32 bins nearly equally used
    assert scores["blurry"] < 0.3
    assert not any(_flags_of_one(noise).values())


def _flags_of_one(rgb: np.ndarray) -> dict[str, bool]:
    scores = {issue: np.array([score]) for issue, score in pixel_quality_scores(rgb).items()}
    return {issue: len(indices) == 1 for issue, indices in flag_issues(scores, QualityThresholds()).items()}


def naive_blur_effect(luma: np.ndarray, taps: int) -> float:
    """Crete et al. (2007), pixel by pixel: re-blur along each direction, compare neighbour differences."""
    image = luma.astype(np.float64)
    blurs = []
    for direction in (image, image.T):  # horizontal, then vertical as rows of the transpose
        height, width = direction.shape
        blurred = np.zeros_like(direction)
        for i in range(height):
            for j in range(width):
                window = [direction[i, min(max(k, 0), width - 1)] for k in range(j - taps // 2, j - taps // 2 + taps)]
                blurred[i, j] = sum(window) / taps
        s_f = s_v = 0.0
        for i in range(height):
            for j in range(1, width):
                d_f = abs(direction[i, j] - direction[i, j - 1])
                d_b = abs(blurred[i, j] - blurred[i, j - 1])
                s_f += d_f
                s_v += max(0.0, d_f - d_b)
        if s_f > 0:
            blurs.append((s_f - s_v) / s_f)
    return max(blurs, default=1.0)


@pytest.mark.parametrize("taps", [3, 5, 9])
def test_blur_effect_matches_a_pixel_by_pixel_reference(cifar_images, taps):
    luma = np.asarray(cifar_images[0].convert("L"))
    assert blur_effect(luma, taps) == pytest.approx(naive_blur_effect(luma, taps), abs=1e-9)
    stripes = np.tile(np.array([0, 0, 255, 255], np.uint8), (6, 3))  # values change along the rows only
    assert blur_effect(stripes, taps) == pytest.approx(naive_blur_effect(stripes, taps), abs=1e-9)


def test_blur_effect_grows_with_the_blur(cifar_images):
    for image in cifar_images[:10]:
        blurs = [blur_effect(np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(r)))) for r in (0, 1, 2, 4)]
        assert blurs == sorted(blurs), blurs
    assert blur_effect(np.full((8, 8), 7)) == 1.0  # nothing varies: nothing sharp


def test_large_images_are_scored_on_a_128_px_copy(cifar_images):
    small = np.asarray(cifar_images[3].resize((128, 96), Image.Resampling.BICUBIC))
    large = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)  # (768, 1024, 3): box-downscales back to small
    assert pixel_quality_scores(large) == pytest.approx(pixel_quality_scores(small), abs=1e-6)
    assert pixel_quality_scores(Image.fromarray(large)) == pixel_quality_scores(large)


def test_pixel_quality_scores_rejects_what_is_not_rgb_uint8():
    with pytest.raises(ValueError, match="uint8"):
        pixel_quality_scores(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        pixel_quality_scores(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="0x8"):
        pixel_quality_scores(np.zeros((8, 0, 3), np.uint8))


def test_flag_issues_lists_the_worst_first():
    scores = {
        "dark": np.array([0.1, 0.95, 0.8, 0.99, 0.8, 0.5]),
        "odd_size": np.array([0.0, 0.0, 3.0, 0.0, 1.0, 0.0]),
    }
    flagged = flag_issues(scores, QualityThresholds())
    assert flagged["dark"].tolist() == [3, 1, 2, 4]  # ties (0.8) by index; 0.8 itself is flagged
    assert flagged["odd_size"].tolist() == [2, 4]
    assert flagged["dark"].dtype == np.int64
    assert flag_issues({"blurry": np.zeros(0)}, QualityThresholds())["blurry"].tolist() == []
    with pytest.raises(ValueError, match="unknown quality issue 'noisy'; valid: dark, overexposed"):
        flag_issues({"noisy": np.zeros(3)}, QualityThresholds())


def test_odd_size_flags_a_wide_image_among_squares():
    widths, heights = np.full(50, 32), np.full(50, 32)
    heights[7] = 96  # 32x96: aspect 3x off (and area 3x)
    scores = odd_size_scores(widths, heights)
    flagged = flag_issues({"odd_size": scores}, QualityThresholds())["odd_size"]
    assert flagged.tolist() == [7]
    assert scores[7] == pytest.approx(np.log(3) / np.log(2))
    assert np.all(np.delete(scores, 7) == 0)


def test_odd_size_scores_one_at_4x_area_or_2x_aspect():
    widths = np.array([32] * 20 + [64, 16, 64, 16])
    heights = np.array([32] * 20 + [64, 16, 32, 32])
    scores = odd_size_scores(widths, heights)
    assert scores[20:] == pytest.approx([1.0, 1.0, 1.0, 1.0])  # 4x the area, a quarter, 2x wider, 2x taller


def test_odd_size_widens_its_tolerance_on_a_varied_dataset():
    rng = np.random.default_rng(0)
    widths = np.rint(np.exp(rng.normal(np.log(640), 0.8, 1000)))  # a web crawl: sizes vary a lot
    heights = np.rint(widths * np.exp(rng.normal(np.log(0.75), 0.1, 1000)))
    scores = odd_size_scores(widths, heights)
    assert (scores >= 1.0).mean() < 0.01  # beyond 3 robust standard deviations only
    with pytest.raises(ValueError, match="positive"):
        odd_size_scores(np.array([32, 0]), np.array([32, 32]))
    assert odd_size_scores(np.zeros(0), np.zeros(0)).shape == (0,)
