"""One decode per image: pixel digests, scores, renditions, on a folder of real CIFAR-10 images."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_core.curation.alignment import alignment_rendition
from ssl_core.curation.embedders import pixel_embedding
from ssl_core.curation.quality import PIXEL_ISSUES, pixel_quality_scores
from ssl_core.curation.scan import pixel_digest, scan_images
from tests.datasets import SHIPPED

PER_CLASS = 30  # 300 images: past scan_images' 256, so num_workers=2 takes the process pool
BROKEN = {"broken/garbage.jpg", "broken/truncated.jpg", "broken/missing.jpg"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Real CIFAR-10 JPEGs (train/<class>/NNNN.jpg) and three that do not decode, with their relative paths."""
    root = tmp_path_factory.mktemp("scan")
    paths = []
    with tarfile.open(SHIPPED.path, "r:gz") as tar:
        for member in tar:
            name = member.name.split("/")  # <top>/<split>/<class>/NNNN.jpg
            if member.isfile() and name[1] == "train" and int(name[3].removesuffix(".jpg")) < PER_CLASS:
                path = "/".join(name[1:])
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(tar.extractfile(member).read())
                paths.append(path)
    assert len(paths) == 10 * PER_CLASS
    (root / "broken").mkdir()
    (root / "broken/garbage.jpg").write_bytes(b"not an image at all")
    jpeg = (root / paths[0]).read_bytes()
    (root / "broken/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    # Interleaved with the good ones, so a shifted result would show; "missing" was deleted after ingest.
    return root, paths[:5] + ["broken/garbage.jpg"] + paths[5:150] + [
        "broken/truncated.jpg",
        "broken/missing.jpg",
    ] + paths[150:]


def saved(array: np.ndarray, format: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_pixel_digest_is_a_hash_of_shape_and_pixels():
    rgb = np.random.default_rng(0).integers(256, size=(4, 6, 3), dtype=np.uint8)
    expected = hashlib.sha256(b"6x4:" + rgb.tobytes()).hexdigest()
    assert pixel_digest(rgb) == expected
    assert pixel_digest(np.asfortranarray(rgb)) == expected  # memory layout does not enter it
    assert pixel_digest(rgb.reshape(6, 4, 3)) != expected  # same bytes, other shape


def test_same_pixels_in_other_formats_share_a_digest(folder):
    root, paths = folder
    rgb = np.asarray(Image.open(root / paths[0]).convert("RGB"))
    png, bmp, rgba_png = saved(rgb, "PNG"), saved(rgb, "BMP"), saved(rgb, "PNG", "RGBA")
    assert png != bmp and png != rgba_png  # different bytes...
    assert pixel_digest(decoded(png)) == pixel_digest(decoded(bmp)) == pixel_digest(decoded(rgba_png))  # same pixels
    assert pixel_digest(decoded(png)) == pixel_digest(rgb)
    assert pixel_digest(decoded(saved(rgb, "JPEG"))) != pixel_digest(rgb)  # a lossy re-encode is not exact

    changed = rgb.copy()
    changed[17, 5, 1] ^= 1  # one channel of one pixel, by one grey level
    assert pixel_digest(decoded(saved(changed, "PNG"))) != pixel_digest(rgb)


def test_scan_gives_each_images_results_in_order(folder):
    root, paths = folder
    ticks = []
    scan = scan_images(root, paths, with_pixel_embeddings=True, num_workers=0, on_image=ticks.append)
    assert ticks == [1] * len(paths)

    broken = [i for i, path in enumerate(paths) if path in BROKEN]
    assert sorted(scan.unreadable) == broken == [5, 151, 152]
    assert all(message for message in scan.unreadable.values())
    assert "FileNotFoundError" in scan.unreadable[152]

    assert scan.renditions.shape == (len(paths), 32, 32) and scan.pixel_embeddings.shape == (len(paths), 192)
    for i, path in enumerate(paths):
        if i in broken:
            assert scan.digests[i] == "" and scan.file_bytes[i] == 0
            assert all(scan.scores[issue][i] == 0 for issue in PIXEL_ISSUES)
            assert not scan.renditions[i].any() and not scan.pixel_embeddings[i].any()
            continue
        with Image.open(root / path) as image:
            rgb = image.convert("RGB")
        assert scan.digests[i] == pixel_digest(np.asarray(rgb))
        assert scan.file_bytes[i] == (root / path).stat().st_size
        np.testing.assert_array_equal(scan.renditions[i], alignment_rendition(rgb))
        np.testing.assert_allclose(scan.pixel_embeddings[i], pixel_embedding(rgb), atol=1e-6)
        expected = pixel_quality_scores(np.asarray(rgb))
        assert [scan.scores[issue][i] for issue in PIXEL_ISSUES] == pytest.approx([expected[j] for j in PIXEL_ISSUES])
    assert len(set(scan.digests)) == len(paths) - 2  # distinct real images; the three broken share ""


def test_process_pool_gives_the_same_result(folder):
    root, paths = folder
    serial = scan_images(root, paths, with_pixel_embeddings=False, num_workers=0)
    ticks = []
    pooled = scan_images(root, paths, with_pixel_embeddings=False, num_workers=2, on_image=ticks.append)
    assert len(ticks) == len(paths) > 256
    assert pooled.digests == serial.digests and pooled.unreadable == serial.unreadable
    np.testing.assert_array_equal(pooled.renditions, serial.renditions)
    np.testing.assert_array_equal(pooled.file_bytes, serial.file_bytes)
    for issue in PIXEL_ISSUES:
        np.testing.assert_array_equal(pooled.scores[issue], serial.scores[issue])
    assert serial.pixel_embeddings is None and pooled.pixel_embeddings is None


def test_scan_of_nothing():
    scan = scan_images(Path("."), [], with_pixel_embeddings=True, num_workers=2)
    assert scan.digests == [] and scan.unreadable == {} and scan.renditions.shape == (0, 32, 32)
    assert scan.file_bytes.shape == (0,) and all(scores.shape == (0,) for scores in scan.scores.values())
