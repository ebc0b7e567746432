"""The curate stage on real CIFAR-10 images with planted problems: what it finds, drops and writes.

Planted into 150 real images: an exact duplicate (the same pixels as PNG), a near
duplicate (JPEG quality 50 and a 1-pixel crop resized back), a test image copied
into train, and black, white and grey images. One curate run is checked for each
finding, what it dropped and why, and the curated folder it wrote; bad requests
fail with one line before any work and leave no curated folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ssl_core.manifest import MANIFEST_NAME, read_manifest, sha256_file, write_manifest
from tasks import cli
from tasks.curate import CurationError, run
from tasks.curate.embedder import EmbedderError
from tasks.curate.stage import SCORES_CSV
from tasks.errors import UserError
from tasks.ingest import run as ingest
from tasks.layout import CURATION_PAGE, CURATION_REPORT
from tasks.model_uris import RegistryError
from tasks.params import CurateParams, DataParams, IngestParams, parse_params
from tests.datasets import cut_cifar10

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = DataParams()
SPLITS = (DATA.train_split, DATA.test_split)
SELECTION_SIZE = 10

# Manifest paths of the planted images, and of the originals they copy.
EXACT = ("images/train/cat/0000.jpg", "images/train/cat/exact-copy.png")
NEAR = ("images/train/dog/0001.jpg", "images/train/dog/near-copy.jpg")
LEAK = {"train": "images/train/bird/leaked.jpg", "test": "images/test/bird/0000.jpg"}
BLACK, WHITE, GREY = (f"images/train/ship/{name}.png" for name in ("black", "white", "grey"))


def curate_params(**overrides) -> CurateParams:
    """The shipped defaults, in this process (no worker pool), with ``overrides`` as in params.yaml."""
    return parse_params({"curate": {"num_workers": 0, **overrides}}).curate


def plant_problems(folder: Path) -> None:
    """Adds the planted images to a ``train/<class>/``, ``test/<class>/`` folder of CIFAR-10 JPEGs."""
    cat = Image.open(folder / "train/cat/0000.jpg").convert("RGB")
    cat.save(folder / "train/cat/exact-copy.png")  # same pixels, other bytes
    dog = Image.open(folder / "train/dog/0001.jpg").convert("RGB")
    recompressed = io.BytesIO()
    dog.save(recompressed, "JPEG", quality=50)
    near = Image.open(recompressed).convert("RGB").crop((1, 1, 32, 32)).resize((32, 32), Image.Resampling.BICUBIC)
    near.save(folder / "train/dog/near-copy.jpg", quality=95)
    shutil.copyfile(folder / "test/bird/0000.jpg", folder / "train/bird/leaked.jpg")
    for name, level in (("black", 0), ("white", 255), ("grey", 128)):
        Image.fromarray(np.full((32, 32, 3), level, dtype=np.uint8)).save(folder / f"train/ship/{name}.png")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 train + 5 test real images per class, the planted ones added, ingested."""
    root = tmp_path_factory.mktemp("curate-data")
    with tarfile.open(cut_cifar10(root / "cifar.tar.gz", 10, 5)) as tar:
        tar.extractall(root / "source", filter="data")
    source = root / "source" / "cifar10-subset"
    plant_problems(source)
    ingest(IngestParams(source=str(source)), root / "ingested")
    return root / "ingested"


@pytest.fixture(scope="module")
def curated(ingested: Path) -> Path:
    out = ingested.parent / "curated"
    run(curate_params(selection={"size": SELECTION_SIZE}), *SPLITS, ingested, out)
    return out


@pytest.fixture(scope="module")
def report(curated: Path) -> dict:
    return json.loads((curated / CURATION_REPORT).read_text())


def test_exact_and_near_duplicates_are_found(report: dict) -> None:
    # The leak's two copies share their pixels too: an exact group across the splits.
    assert sorted(map(sorted, report["exact_duplicates"])) == [sorted(LEAK.values()), sorted(EXACT)]
    # Only the planted pair: no two of the real images are the same shot.
    assert [sorted(group) for group in report["near_duplicates"]] == [sorted(NEAR)]
    assert report["near_duplicate_similarity"][0] >= 0.9
    counts = report["counts"]
    assert counts["exact_duplicate_groups"] == 2 and counts["near_duplicate_groups"] == 1


def test_the_test_image_copied_into_train_is_a_leak(report: dict) -> None:
    assert [{"train": leak["train"], "test": leak["test"]} for leak in report["leakage"]] == [LEAK]
    assert report["leakage"][0]["similarity"] == pytest.approx(1.0)
    assert report["counts"]["leaked_test_images"] == 1


def test_black_white_and_grey_images_are_flagged(report: dict) -> None:
    quality = {issue: set(paths) for issue, paths in report["quality"].items()}
    assert {BLACK, WHITE, GREY} <= quality["low_information"]  # a single grey level
    assert BLACK in quality["dark"] and WHITE in quality["overexposed"]
    assert GREY not in quality["dark"] | quality["overexposed"]  # mid-grey is neither
    assert report["counts"]["quality"] == {issue: len(paths) for issue, paths in report["quality"].items()}
    for issue, paths in report["quality"].items():
        threshold = report["quality_thresholds"][issue]
        assert all(report["quality_scores"][issue][path] >= threshold for path in paths)


def test_each_planted_problem_is_dropped_with_its_reason(report: dict) -> None:
    reasons = {path: reason.split(":")[0] for path, reason in report["dropped"].items()}
    assert reasons[EXACT[1]] == "exact_duplicates"  # same pixels: the first by path stays
    assert [reasons.get(path) for path in NEAR].count("near_duplicates") == 1  # one of the two stays
    assert reasons[LEAK["train"]] == "leakage" and LEAK["test"] not in reasons  # the test split keeps its image
    # White is flagged overexposed (not dropped by default: white-background shots) and dropped as blank.
    assert (reasons[BLACK], reasons[WHITE], reasons[GREY]) == ("dark", "low_information", "low_information")
    assert report["counts"]["dropped"] == dict(Counter(reasons.values()))
    assert report["counts"]["kept"] == report["counts"]["images"] - len(reasons)


def test_curated_folder_is_the_kept_images(ingested: Path, curated: Path, report: dict) -> None:
    before = read_manifest(ingested / MANIFEST_NAME)
    after = read_manifest(curated / MANIFEST_NAME)
    assert {r.path for r in after} == {r.path for r in before} - set(report["dropped"])
    assert len(before) == report["counts"]["images"] == 150 + 6 and len(after) == report["counts"]["kept"]
    # The records themselves are the ingested ones, and each image is the same file (a hard link).
    assert set(after) <= set(before)
    for record in after:
        assert os.path.samefile(curated / record.path, ingested / record.path)
    assert not any((curated / path).exists() for path in report["dropped"])
    assert curated.stat().st_mode & 0o055 == 0o055  # readable by all, as the ingested folder (not mkdtemp's 0700)
    assert (curated / "source_manifest_sha256.txt").read_text().strip() == sha256_file(ingested / MANIFEST_NAME)
    assert (curated / "ingest_report.json").read_bytes() == (ingested / "ingest_report.json").read_bytes()
    assert len((curated / SCORES_CSV).read_text().splitlines()) == 1 + len(before)
    page = (curated / CURATION_PAGE).read_text()
    assert page.startswith("<!") and "exact-copy.png" in page and "leaked.jpg" in page


def test_selection_picks_distinct_kept_training_images_and_beats_random(report: dict, ingested: Path) -> None:
    selection = report["selection"]
    paths = selection["paths"]
    train = {r.path for r in read_manifest(ingested / MANIFEST_NAME) if r.split == DATA.train_split}
    assert len(paths) == len(set(paths)) == SELECTION_SIZE
    assert set(paths) <= train - set(report["dropped"])
    assert selection["strategy"] == "typicality" and selection["size"] == SELECTION_SIZE
    metrics = selection["metrics"]
    assert set(metrics) == {"selected", "random"}
    for picked in metrics.values():
        assert set(picked) == {"mean_nn_distance", "coverage_mean_distance", "coverage_max_distance"}
    # TypiClust picks one image per cluster: it covers the set better on average than a random pick.
    assert metrics["selected"]["coverage_mean_distance"] < metrics["random"]["coverage_mean_distance"]


def test_kcenter_selection_covers_the_worst_image_better_than_random(ingested: Path, tmp_path: Path) -> None:
    params = curate_params(selection={"size": SELECTION_SIZE, "strategy": "kcenter"}, map_points=0)
    selection = run(params, *SPLITS, ingested, tmp_path / "not-yet" / "curated")["selection"]  # parents made
    assert selection["strategy"] == "kcenter" and len(set(selection["paths"])) == SELECTION_SIZE
    # k-center greedy minimizes the largest distance to the nearest pick (a 2-approximation).
    metrics = selection["metrics"]
    assert metrics["selected"]["coverage_max_distance"] < metrics["random"]["coverage_max_distance"]


# --- bad requests: one line, before any work, no curated folder --------------------------------


@pytest.fixture()
def no_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if curate starts decoding images: the error must come first."""

    def scan(*args, **kwargs):
        raise AssertionError("curate decoded images before refusing the request")

    monkeypatch.setattr("tasks.curate.stage.scan_images", scan)


def refused(error_type: type[UserError], params: CurateParams, data: Path, out: Path) -> str:
    with pytest.raises(error_type) as error:
        run(params, *SPLITS, data, out)
    assert not out.exists()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_empty_manifest_is_refused(tmp_path: Path, no_scan: None) -> None:
    write_manifest([], tmp_path / MANIFEST_NAME)
    message = refused(CurationError, curate_params(), tmp_path, tmp_path / "curated")
    assert "lists no image" in message


def test_an_unknown_embedder_names_the_choices(ingested: Path, tmp_path: Path, no_scan: None) -> None:
    message = refused(EmbedderError, curate_params(embedder="nope.pt"), ingested, tmp_path / "curated")
    assert "curate.embedder = 'nope.pt'" in message and "'pixels'" in message and "models:/" in message


def test_a_registry_alias_that_does_not_exist_is_refused(
    ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_scan: None
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = curate_params(embedder="models:/ssl-embedder@nope")
    message = refused(RegistryError, params, ingested, tmp_path / "curated")
    assert "models:/ssl-embedder@nope: not found in the MLflow registry" in message


def test_a_selection_larger_than_the_train_split_is_refused(ingested: Path, tmp_path: Path, no_scan: None) -> None:
    num_train = sum(r.split == DATA.train_split for r in read_manifest(ingested / MANIFEST_NAME))
    params = curate_params(selection={"size": num_train + 1})
    message = refused(CurationError, params, ingested, tmp_path / "curated")
    assert f"curate.selection.size = {num_train + 1}" in message and f"only {num_train} images" in message


def test_the_test_split_is_only_flagged_unless_drop_test_images(tmp_path: Path) -> None:
    with tarfile.open(cut_cifar10(tmp_path / "cifar.tar.gz", 2, 1)) as tar:
        tar.extractall(tmp_path / "source", filter="data")
    source = tmp_path / "source" / "cifar10-subset"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(source / "test/ship/black.png")
    ingest(IngestParams(source=str(source)), tmp_path / "ingested")
    black = "images/test/ship/black.png"
    kept = run(curate_params(map_points=0), *SPLITS, tmp_path / "ingested", tmp_path / "kept")
    assert black in kept["quality"]["dark"] and black not in kept["dropped"]
    assert black in {r.path for r in read_manifest(tmp_path / "kept" / MANIFEST_NAME)}
    dropped = run(curate_params(map_points=0, drop_test_images=True), *SPLITS, tmp_path / "ingested", tmp_path / "out")
    assert dropped["dropped"][black].startswith("dark")


def test_dropping_every_image_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for split, count in (("train", 4), ("test", 2)):
        (source / split / "night").mkdir(parents=True)
        for i in range(count):  # dark, and each with its own pixels: no duplicates to drop instead
            pixels = np.full((32, 32, 3), i + 3 * (split == "test"), dtype=np.uint8)
            Image.fromarray(pixels).save(source / split / "night" / f"{i}.png")
    ingest(IngestParams(source=str(source)), tmp_path / "ingested")
    message = refused(CurationError, curate_params(drop=["dark"]), tmp_path / "ingested", tmp_path / "curated")
    assert "would drop every image of split 'train'" in message and "curate.drop = ['dark']" in message


def test_cli_prints_a_bad_embedder_as_one_line(
    ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_scan: None
) -> None:
    out = tmp_path / "curated"
    argv = ["curate", "--params", str(REPO_ROOT / "params.yaml"), "--data", str(ingested), "--out", str(out)]
    assert cli.main([*argv, "--set", "curate.embedder=nope.pt"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sslpipe curate: error: curate.embedder = 'nope.pt'") and "\n" not in error
    assert not out.exists()


def test_params_yaml_lists_every_curate_key() -> None:
    def keys(tree: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in tree.items():
            found.add(prefix + key)
            if isinstance(value, dict):
                found |= keys(value, f"{prefix}{key}.")
        return found

    shipped = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["curate"]
    assert keys(shipped) == keys(CurateParams().model_dump())
