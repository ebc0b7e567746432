"""End to end without labels: a flat folder of 150 real images to a registered ONNX model that ``sslpipe serve`` serves.

The user this product is for: many unlabeled images, no class folders. ``sslpipe run``
runs every stage in one process (``tests/test_pipeline_e2e.py`` runs them through
``dvc repro``, one process each); evaluate reports the label-free metrics only (and says
why there is no kNN), as does the run's summary; register promotes on RankMe; the
champion is then served by the real CLI process over HTTP, and its embeddings equal the
exported ONNX file's.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.stages import STAGE_NAMES
from tests.project import make_project, sh
from tests.servers import served_embeddings

pytestmark = pytest.mark.slow


def flat_folder(archive: Path, destination: Path, count: int) -> Path:
    """The first ``count`` train images of the archive, renamed into one flat folder: no labels, no splits."""
    destination.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/train/" in m.name][:count]
        for i, member in enumerate(members):
            (destination / f"frame_{i:04d}.jpg").write_bytes(tar.extractfile(member).read())
    return destination


@dataclass(frozen=True)
class UnlabeledRun:
    project: Path
    output: str  # what `sslpipe run` printed


@pytest.fixture(scope="module")
def unlabeled_run(tmp_path_factory: pytest.TempPathFactory, tiny_cifar_archive: Path) -> UnlabeledRun:
    project = make_project(tmp_path_factory.mktemp("unlabeled"), tiny_cifar_archive)
    flat_folder(tiny_cifar_archive, project / "data/frames", 150)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["source"] = "data/frames"
    params["curate"]["selection"]["size"] = 20
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh(project, "sslpipe", "run")
    return UnlabeledRun(project, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def unlabeled_project(unlabeled_run: UnlabeledRun) -> Path:
    return unlabeled_run.project


def test_every_stage_ran_and_the_summary_says_why_there_is_no_knn(unlabeled_run: UnlabeledRun) -> None:
    assert [f"== {stage} ==" in unlabeled_run.output for stage in STAGE_NAMES] == [True] * len(STAGE_NAMES)
    assert "Pipeline finished" in unlabeled_run.output
    skipped = "no image of the train split has a label"
    assert f"no labeled images: label-free metrics only ({skipped})" in unlabeled_run.output
    assert "kNN top-1" not in unlabeled_run.output


def test_a_flat_unlabeled_folder_gets_label_free_metrics_and_a_champion(unlabeled_project: Path) -> None:
    metrics = json.loads((unlabeled_project / "reports/evaluate/metrics.json").read_text())
    curated = json.loads((unlabeled_project / "data/curated/report.json").read_text())
    assert metrics["labels"] == {"skipped": "no image of the train split has a label"}
    assert metrics["num_images"] == metrics["num_unlabeled"] == curated["counts"]["kept"] <= 150
    assert "top1" not in metrics["student"]
    for name in ("student", "random_init"):
        assert 1.0 < metrics[name]["rankme"] <= 150 and -4.0 < metrics[name]["uniformity"] < 0.0
    assert (unlabeled_project / "reports/evaluate/evaluation.png").stat().st_size > 10_000
    registration = json.loads((unlabeled_project / "reports/registration.json").read_text())
    assert registration["gate_metric"] == "rankme" and registration["promoted_to_champion"]
    assert registration["aliases"] == ["challenger", "champion"]
    assert registration["tags"]["rankme"] == registration["tags"]["gate_value"] == f"{metrics['student']['rankme']:.6f}"


def test_sslpipe_serve_serves_the_unlabeled_champion(unlabeled_project: Path, tmp_path: Path) -> None:
    from PIL import Image

    from ssl_core.onnx_embedder import OnnxEmbedder

    images = sorted((unlabeled_project / "data/frames").glob("*.jpg"))[:3]
    answer = served_embeddings(unlabeled_project, "models:/ssl-embedder@champion", images, tmp_path / "serve.log")
    direct = OnnxEmbedder(unlabeled_project / "models/onnx/model.onnx").embed([Image.open(p) for p in images])
    np.testing.assert_allclose(np.array(answer["embeddings"]), direct, atol=1e-5)
