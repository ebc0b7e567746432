"""The report page, from a small real report on CIFAR-10 images, checked in a real browser; and the 2-D map.

:func:`real_report` builds a report as the curate stage does, from real images with
planted problems (an exact copy, a re-encoded near copy, a train image copied into
test, a darkened and a blurred image, a manifest row whose file is gone), with the
quality scores of :mod:`ssl_core.curation.quality` and a 16x16 pixel embedding.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ssl_core.curation.embedding_map import embedding_map
from ssl_core.curation.quality import QualityThresholds, flag_issues, pixel_quality_scores
from tasks.curate.report_page import map_categories, write_report_page
from tests.browser import open_page
from tests.datasets import cut_cifar10

SIMILAR = 0.95  # cosine from which two pixel embeddings are near duplicates or a leak
MISSING = "cifar10-subset/train/frog/gone.jpg"  # in the report, not on disk
HEADINGS = ["Counts", "Duplicates", "Train/test leaks", "Quality issues", "Outliers", "Selection", "Embedding map"]


def plant(root: Path) -> None:
    """Problems the report must show, made from the extracted real images."""
    top = root / "cifar10-subset"
    first = sorted((top / "train").rglob("*.jpg"))
    shutil.copyfile(first[0], first[0].with_name("copy.jpg"))  # exact duplicate
    Image.open(first[1]).save(first[1].with_name("reencoded.jpg"), quality=40)  # near duplicate
    shutil.copyfile(first[2], top / "test" / first[2].parent.name / "leak.jpg")  # train image in test
    darkened = np.asarray(Image.open(first[3]), dtype=np.float32) * 0.08
    Image.fromarray(darkened.astype(np.uint8)).save(first[3].with_name("dark.png"))
    Image.open(first[4]).filter(ImageFilter.GaussianBlur(2.0)).save(first[4].with_name("blurry.png"))


def real_report(root: Path, archive: Path, selection_size: int = 8) -> tuple[dict, np.ndarray, list[str]]:
    """(report, (N, D) embeddings, paths) of the images in ``archive``, extracted and planted under ``root``."""
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    plant(root)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in {".jpg", ".png"})
    rgbs = [Image.open(root / p).convert("RGB") for p in paths]
    paths.append(MISSING)
    split = np.array([p.split("/")[1] for p in paths])
    small = np.stack([np.asarray(rgb.resize((16, 16), Image.Resampling.BOX), dtype=np.float32) for rgb in rgbs])
    centred = (small - small.mean(axis=(1, 2), keepdims=True)).reshape(len(rgbs), -1)
    x = centred / np.linalg.norm(centred, axis=1, keepdims=True)  # (N - 1, 768)
    gone = np.random.default_rng(0).normal(size=(1, x.shape[1]))  # the missing image's, from before it went
    x = np.concatenate([x, gone / np.linalg.norm(gone)]).astype(np.float32)
    similarity = x @ x.T  # (N, N)
    np.fill_diagonal(similarity, -1.0)

    # Equal pixels in one split are duplicates; across splits, a leak.
    digests = [(s, hashlib.sha256(np.asarray(rgb).tobytes()).hexdigest()) for s, rgb in zip(split, rgbs, strict=False)]
    digests.append(("train", "gone"))
    exact = [[paths[i] for i, d in enumerate(digests) if d == digest] for digest in dict.fromkeys(digests)]
    exact = [group for group in exact if len(group) > 1]
    same = {i for group in exact for i in map(paths.index, group[1:])}
    near = [
        (i, j)
        for i, j in zip(*np.nonzero(np.triu(similarity >= SIMILAR)), strict=True)
        if split[i] == split[j] and i not in same and j not in same
    ]
    leaks = [
        (i, j)
        for i, j in zip(*np.nonzero(similarity >= SIMILAR), strict=True)
        if (split[i], split[j]) == ("train", "test")
    ]

    scores = {issue: np.zeros(len(paths), np.float32) for issue in ("dark", "overexposed", "low_information", "blurry")}
    for n, rgb in enumerate(rgbs):
        for issue, value in pixel_quality_scores(rgb).items():
            scores[issue][n] = value
    flagged = {
        issue: [paths[i] for i in indices] for issue, indices in flag_issues(scores, QualityThresholds()).items()
    }
    quality_scores = {issue: {p: float(scores[issue][paths.index(p)]) for p in ps} for issue, ps in flagged.items()}
    flagged["odd_size"], quality_scores["odd_size"] = [MISSING], {MISSING: 1.7}

    knn = -np.sort(-similarity, axis=1)[:, :3]  # (N, 3) most similar other images
    outlier_score = 1.0 - knn.mean(axis=1)
    outliers = [paths[i] for i in np.argsort(-outlier_score)[:3]]
    picks = np.argsort(-outlier_score)[::7][:selection_size]  # spread out, a stand-in for k-center

    dropped = {paths[i]: "exact_duplicate" for i in same}
    dropped |= {paths[j]: "near_duplicate" for _, j in near}
    dropped |= {paths[j]: "leak" for _, j in leaks}
    dropped |= {p: issue for issue, ps in flagged.items() for p in ps}
    reasons = sorted(set(dropped.values()))
    report = {
        "num_images": len(paths),
        "splits": {s: int((split == s).sum()) for s in ("train", "test")},
        "embedder": {"spec": "pixels", "dim": x.shape[1]},
        "exact_duplicates": exact,
        "near_duplicates": [[paths[i], paths[j]] for i, j in near],
        "near_duplicate_similarity": [float(similarity[i, j]) for i, j in near],
        "leakage": [{"train": paths[i], "test": paths[j], "similarity": float(similarity[i, j])} for i, j in leaks],
        "quality": flagged,
        "quality_scores": quality_scores,
        "quality_thresholds": {"dark": 0.8, "overexposed": 0.9, "low_information": 0.5, "blurry": 0.6, "odd_size": 1.0},
        "outliers": outliers,
        "outlier_scores": {p: float(outlier_score[paths.index(p)]) for p in outliers},
        "selection": {
            "strategy": "kcenter",
            "size": len(picks),
            "paths": [paths[i] for i in picks],
            "metrics": {
                "selected": {"mean_nn_distance": 0.41, "coverage_mean_distance": 0.22, "coverage_max_distance": 0.5},
                "random": {"mean_nn_distance": 0.30, "coverage_mean_distance": 0.27, "coverage_max_distance": 0.7},
            },
        },
        "dropped": dropped,
        "counts": {
            "images": len(paths),
            "kept": len(paths) - len(dropped),
            "dropped": {reason: sum(r == reason for r in dropped.values()) for reason in reasons},
            "exact_duplicate_groups": len(exact),
            "near_duplicate_groups": len(near),
            "leaked_test_images": len({j for _, j in leaks}),
            "quality": {issue: len(ps) for issue, ps in flagged.items()},
            "outliers": len(outliers),
        },
        "thresholds": {"near_duplicate_similarity": SIMILAR, "outlier_z": 3.0},
    }
    return report, x, paths


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The page of a real report on 20 train + 10 test CIFAR-10 images plus the planted problems."""
    tmp = tmp_path_factory.mktemp("report")
    report, x, paths = real_report(tmp / "images", cut_cifar10(tmp / "x.tar.gz", 2, 1))
    indices, xy = embedding_map(x, seed=0)
    page = write_report_page(report, tmp / "images", tmp / "report.html", ([paths[i] for i in indices], xy))
    return page, report


def test_real_report_has_every_planted_problem(rendered):
    _, report = rendered
    assert [len(group) for group in report["exact_duplicates"]] == [2]
    assert len(report["near_duplicates"]) >= 1 and len(report["leakage"]) >= 1
    assert any(p.endswith("dark.png") for p in report["quality"]["dark"])


def test_page_renders_offline_in_a_browser(rendered, tmp_path):
    page_path, report = rendered
    with open_page(page_path) as browser:
        page = browser.page
        assert browser.broken_images() == []
        assert page.locator("img").count() >= 10
        for heading in HEADINGS:
            assert page.get_by_role("heading", name=heading, exact=False).first.is_visible(), heading
        labels, values = page.locator(".card span").all_inner_texts(), page.locator(".card b").all_inner_texts()
        cards = dict(zip(labels, values, strict=True))
        assert cards["images"] == str(report["counts"]["images"])
        assert cards["kept"] == str(report["counts"]["kept"])
        assert cards["leaked test images"] == str(report["counts"]["leaked_test_images"])
        # The missing image is a visible placeholder, captioned with its score.
        assert page.locator(".missing").first.is_visible()
        assert page.get_by_text("1.7", exact=True).is_visible()
        screenshot = tmp_path / "page.png"
        page.screenshot(path=screenshot, full_page=True)
        assert browser.external_requests == []
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.width == 1280 and image.height > 1500
        assert np.asarray(image.convert("L"), dtype=np.float32).std() > 20  # not a blank page


def test_page_is_self_contained_and_escapes_paths(tmp_path):
    hostile = "train/<script>alert(1)</script>.jpg"
    report = {
        "num_images": 1,
        "quality": {"dark": [hostile]},
        "quality_scores": {"dark": {hostile: 0.9}},
        "outliers": [hostile],
        "dropped": {hostile: "<b>dark</b>"},
        "counts": {"images": 1, "kept": 0, "dropped": {"<b>dark</b>": 1}},
    }
    html = write_report_page(report, tmp_path, tmp_path / "report.html").read_text(encoding="utf-8")
    assert re.search(r"https?://", html) is None
    assert "<script>" not in html and "<b>dark" not in html
    assert "train/&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in html
    assert "cannot open image" in html


def test_empty_sections_say_none_found_and_long_lists_are_cut(tmp_path):
    groups = [[f"a/{i}.jpg", f"b/{i}.jpg"] for i in range(7)]
    report = {"num_images": 14, "exact_duplicates": groups, "counts": {"images": 14}}
    html = write_report_page(report, tmp_path, tmp_path / "report.html", max_groups=3).read_text(encoding="utf-8")
    assert "… and 4 more groups" in html
    assert html.count("cannot open image") == 3 * 2
    assert html.count("none found") == 4  # near duplicates, leaks, quality, outliers
    assert "none requested" in html and "no map computed" in html


def test_map_categories_take_the_first_that_applies():
    report = {
        "leakage": [{"train": "t", "test": "l", "similarity": 1.0}],
        "outliers": ["o", "l"],
        "dropped": {"d": "blurry", "o": "outlier"},
        "selection": {"paths": ["s", "d"]},
    }
    assert list(map_categories(report, ["t", "l", "o", "d", "s", "k"])) == [
        "leaked",
        "leaked",
        "outlier",
        "dropped",
        "selected",
        "kept",
    ]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_embedding_map_subsamples_deterministically_and_keeps_always_include():
    x = unit_rows(np.random.default_rng(0), 300, 64)
    keep = np.array([299, 0, 150])
    indices, xy = embedding_map(x, max_points=40, seed=1, always_include=keep)
    assert indices.shape == (40,) and xy.shape == (40, 2) and xy.dtype == np.float32
    assert np.all(np.diff(indices) > 0) and set(keep) <= set(indices)
    again = embedding_map(x, max_points=40, seed=1, always_include=keep)
    assert np.array_equal(again[0], indices) and np.array_equal(again[1], xy)
    assert not np.array_equal(embedding_map(x, max_points=40, seed=2)[0], indices)
    # More to include than max_points: the first ones given (the worst), not the lowest indices.
    assert embedding_map(x, max_points=5, always_include=np.arange(50)[::-1])[0].tolist() == [45, 46, 47, 48, 49]
    # Fewer images than max_points: all of them, in order.
    assert np.array_equal(embedding_map(x[:30], max_points=40)[0], np.arange(30))


def test_embedding_map_keeps_two_clusters_apart():
    rng = np.random.default_rng(0)
    centres = unit_rows(rng, 2, 32)
    x = np.repeat(centres, 60, axis=0) + 0.1 * rng.normal(size=(120, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    cluster = np.repeat([0, 1], 60)
    _, xy = embedding_map(x, seed=0)
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1)  # (120, 120)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, :5]  # (120, 5)
    assert np.all(cluster[nearest] == cluster[:, None])
    gap = np.linalg.norm(xy[cluster == 0].mean(0) - xy[cluster == 1].mean(0))
    spread = max(np.linalg.norm(xy[cluster == c] - xy[cluster == c].mean(0), axis=1).mean() for c in (0, 1))
    assert gap > 2 * spread


def test_embedding_map_handles_tiny_inputs_and_rejects_bad_ones():
    x = unit_rows(np.random.default_rng(0), 3, 8)
    indices, xy = embedding_map(x)
    assert indices.tolist() == [0, 1, 2] and xy.shape == (3, 2)
    with pytest.raises(ValueError, match="max_points"):
        embedding_map(x, max_points=0)
    with pytest.raises(ValueError, match="always_include"):
        embedding_map(x, max_points=2, always_include=np.array([5]))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        embedding_map(x[0])


def test_the_browser_check_catches_a_page_that_reaches_out(tmp_path):
    page_path = tmp_path / "leaky.html"
    page_path.write_text('<html><body><h1>x</h1><img src="http://example.com/a.png" alt="remote"></body></html>')
    with open_page(page_path) as browser:
        assert browser.broken_images() == ["remote"]
        assert browser.external_requests == ["http://example.com/a.png"]
