"""Aligned pixel similarity on real CIFAR-10 images, against references written from the definitions."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from scipy import ndimage

from ssl_core.curation.alignment import (
    BAND_PASS_SIGMAS,
    MARGIN,
    SIDE,
    _zncc,
    aligned_similarity,
    alignment_rendition,
    band_pass,
)
from tasks.params import NearDuplicateParams
from tests.datasets import SHIPPED

THRESHOLD = NearDuplicateParams().similarity  # the curate stage's default: from here on, the same shot
PER_CLASS = 5  # 50 images: every edit checked on each, all scored in well under a second


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these tensors are tiny, and a contended second OpenMP thread on a
    busy 2-core machine made a batch of 50 pairs 100x slower (as in tests/ssl_core/conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar() -> tuple[list[Image.Image], np.ndarray]:
    """The first PER_CLASS test images of each class of the shipped subset, and their class ids."""
    images, labels, classes = [], [], {}
    with tarfile.open(SHIPPED.path, "r:gz") as tar:
        for member in tar:
            name = member.name.split("/")  # <top>/<split>/<class>/NNNN.jpg
            if member.isfile() and name[1] == "test" and int(name[3].removesuffix(".jpg")) < PER_CLASS:
                images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                labels.append(classes.setdefault(name[2], len(classes)))
    assert len(classes) == 10 and len(images) == 10 * PER_CLASS
    return images, np.array(labels)


def similarity_to_edits(images: list[Image.Image], edited: list[Image.Image]) -> np.ndarray:
    """Aligned similarity of each image to its edited copy."""
    renditions = np.stack([alignment_rendition(image) for image in images + edited])
    n = len(images)
    return aligned_similarity(renditions, np.arange(n), np.arange(n) + n)


def jpeg(image: Image.Image, quality: int = 50) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def shift(image: Image.Image, pixels: int = 2) -> Image.Image:
    """The picture moved by ``pixels`` diagonally: the top-left border cropped off and the rest resized back."""
    width, height = image.size
    return image.crop((pixels, pixels, width, height)).resize(image.size, Image.Resampling.BICUBIC)


def zoom(image: Image.Image, factor: float = 1.1) -> Image.Image:
    """The centre 1/factor of the picture resized back to its size."""
    width, height = image.size
    left, top = round(width * (1 - 1 / factor) / 2), round(height * (1 - 1 / factor) / 2)
    return image.crop((left, top, width - left, height - top)).resize(image.size, Image.Resampling.BICUBIC)


EDITS = {
    "jpeg_q50": jpeg,
    "shift_2px": shift,
    "zoom_10pct": zoom,
    "brightness_0.8": lambda image: ImageEnhance.Brightness(image).enhance(0.8),
    "contrast_1.2": lambda image: ImageEnhance.Contrast(image).enhance(1.2),
    "resize_64px": lambda image: image.resize((64, 64), Image.Resampling.BICUBIC),
}


def test_rendition_is_box_averaged_grayscale(cifar):
    image = cifar[0][0]
    rendition = alignment_rendition(image)
    assert rendition.shape == (SIDE, SIDE) and rendition.dtype == np.uint8
    np.testing.assert_array_equal(rendition, np.asarray(image.convert("L")))  # 32 px already: untouched
    # At 64 px each rendition pixel is the mean of a 2x2 block of grey levels (up to rounding).
    grey = np.asarray(image.resize((64, 64), Image.Resampling.NEAREST).convert("L"), dtype=np.float64)
    blocks = grey.reshape(SIDE, 2, SIDE, 2).mean(axis=(1, 3))
    big = alignment_rendition(image.resize((64, 64), Image.Resampling.NEAREST))
    assert np.abs(big - blocks).max() <= 1


def test_an_image_matches_itself(cifar):
    np.testing.assert_allclose(similarity_to_edits(cifar[0], cifar[0]), 1.0, atol=1e-4)


@pytest.mark.parametrize("edit", EDITS)
def test_edited_copies_reach_the_threshold(cifar, edit):
    images = cifar[0]
    scores = similarity_to_edits(images, [EDITS[edit](image) for image in images])
    assert scores.min() >= THRESHOLD, f"{edit}: {np.sort(scores)[:5]}"


def test_unrelated_images_stay_well_below(cifar):
    images, labels = cifar
    renditions = np.stack([alignment_rendition(image) for image in images])
    rng = np.random.default_rng(0)
    first, second = rng.integers(len(images), size=(2, 400))
    different_class = labels[first] != labels[second]
    first, second = first[different_class][:100], second[different_class][:100]
    assert len(first) == 100
    scores = aligned_similarity(renditions, first, second)
    assert np.median(scores) < 0.5
    assert np.mean(scores >= THRESHOLD) <= 0.02


def test_symmetric_and_independent_of_batching(cifar):
    renditions = np.stack([alignment_rendition(image) for image in cifar[0]])
    rng = np.random.default_rng(1)
    first, second = rng.integers(len(renditions), size=(2, 60))
    forward = aligned_similarity(renditions, first, second)
    np.testing.assert_array_equal(forward, aligned_similarity(renditions, second, first))
    np.testing.assert_allclose(forward, aligned_similarity(renditions, first, second, batch_size=7), atol=1e-6)


def test_flat_images_match_nothing(cifar):
    real = np.stack([alignment_rendition(image) for image in cifar[0][:10]])
    flat = np.stack([np.full((SIDE, SIDE), level, dtype=np.uint8) for level in (0, 128, 255)])
    flat_jpeg = alignment_rendition(jpeg(Image.new("RGB", (32, 32), (90, 140, 200))))[None]
    renditions = np.concatenate([flat, flat_jpeg, real])
    num_flat = 4
    first = np.repeat(np.arange(num_flat), len(renditions))
    second = np.tile(np.arange(len(renditions)), num_flat)  # each flat image against all, itself included
    scores = aligned_similarity(renditions, first, second)
    np.testing.assert_array_equal(scores, 0.0)
    np.testing.assert_array_equal(aligned_similarity(renditions, second, first), 0.0)


def naive_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each (S, S) image (cut at 3 sigma, edges replicated), by its definition."""
    radius = int(3 * sigma)
    offsets = np.arange(-radius, radius + 1)
    taps = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()  # (2r+1, 2r+1)
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    blurred = np.zeros_like(images)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            blurred += kernel[dy, dx] * padded[:, dy : dy + images.shape[1], dx : dx + images.shape[2]]
    return blurred


def naive_band_pass(images: np.ndarray) -> np.ndarray:
    """Difference of Gaussians: the fine blur minus the coarse one."""
    fine, coarse = BAND_PASS_SIGMAS
    return naive_blur(images, fine) - naive_blur(images, coarse)


def test_band_pass_equals_references(cifar):
    images = np.stack([alignment_rendition(image) for image in cifar[0][:8]]).astype(np.float64) / 255
    ours = band_pass(torch.from_numpy(images).float()).numpy()
    np.testing.assert_allclose(ours, naive_band_pass(images), atol=1e-5)
    fine, coarse = (
        ndimage.gaussian_filter(images, sigma=(0, sigma, sigma), mode="nearest", truncate=3)
        for sigma in BAND_PASS_SIGMAS
    )
    np.testing.assert_allclose(ours, fine - coarse, atol=1e-5)


def test_band_pass_of_a_constant_image_is_zero():
    constant = torch.full((3, SIDE, SIDE), 0.7)
    np.testing.assert_allclose(band_pass(constant).numpy(), 0.0, atol=1e-6)


def naive_zncc(image: np.ndarray, template: np.ndarray) -> float:
    """Best ZNCC of the template's centre (MARGIN cut off each side) over every window of the image."""
    centre = template[MARGIN:-MARGIN, MARGIN:-MARGIN]
    side = centre.shape[0]
    centre = centre - centre.mean()
    best = -np.inf
    for dy in range(SIDE - side + 1):
        for dx in range(SIDE - side + 1):
            window = image[dy : dy + side, dx : dx + side]
            window = window - window.mean()
            best = max(best, (window * centre).sum() / np.sqrt((window**2).sum() * (centre**2).sum()))
    return best


def test_zncc_equals_a_loop_over_every_shift(cifar):
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(3, 2, SIDE, SIDE))
    real = np.stack([alignment_rendition(image) for image in cifar[0]]).astype(np.float64) / 255
    real_pairs = real[rng.choice(len(real), size=(3, 2), replace=False)]
    # A template cut from its image 3 px right and 1 px down: a perfect match at one offset.
    planted = np.stack([real[0], np.roll(real[0], (-1, -3), axis=(0, 1))])[None]
    pairs = np.concatenate([noise, naive_band_pass(real_pairs.reshape(-1, SIDE, SIDE)).reshape(3, 2, SIDE, SIDE)])
    pairs = np.concatenate([pairs, planted])
    ours = _zncc(torch.from_numpy(pairs[:, 0]).float(), torch.from_numpy(pairs[:, 1]).float()).numpy()
    expected = np.array([naive_zncc(image, template) for image, template in pairs])
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert ours[-1] == pytest.approx(1.0, abs=1e-4)
