"""The benchmark script runs end to end on a tiny subset and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import summarize
from benchmarks.lightly_benchmark import DATASETS, main
from tests.datasets import cut_cifar10

TRAIN_PER_CLASS = 8
TEST_PER_CLASS = 4


@pytest.fixture
def datasets_dir(tmp_path: Path) -> Path:
    """A ``--datasets`` folder whose CIFAR-10 archive has the benchmark's name and layout.

    It holds twice the images the test selects, so the script's own class-balanced
    selection is exercised too.
    """
    spec = DATASETS["cifar10"]
    cut_cifar10(tmp_path / "datasets" / spec.archive, 2 * TRAIN_PER_CLASS, 2 * TEST_PER_CLASS, top=spec.top)
    return tmp_path / "datasets"


def run_benchmark(tmp_path: Path, datasets_dir: Path, *options: str) -> None:
    main(
        [
            "--dataset",
            "cifar10",
            "--batch-size",
            "32",
            "--lr",
            "0.02",
            "--train-per-class",
            str(TRAIN_PER_CLASS),
            "--test-per-class",
            str(TEST_PER_CLASS),
            "--num-workers",
            "0",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--datasets",
            str(datasets_dir),
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
            *options,
        ]
    )


def test_methods_run_in_separate_calls_add_up_to_one_table(tmp_path: Path, datasets_dir: Path) -> None:
    """As on a GPU machine with a time limit per call: one method per call, results merged."""
    out = tmp_path / "out"
    run_benchmark(tmp_path, datasets_dir, "--methods", "simclr", "--epochs", "1")
    # Distillation's teacher: the SimCLR of the first call.
    run_benchmark(tmp_path, datasets_dir, "--methods", "distillation", "--epochs", "1")
    report = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in report["results"]] == ["simclr", "distillation"]
    assert len(report["header"]["commands"]) == 2 and "--methods distillation" in report["header"]["commands"][1]
    assert report["header"]["train_images"] == 10 * TRAIN_PER_CLASS
    assert report["header"]["test_images"] == 10 * TEST_PER_CLASS
    for result in report["results"]:
        assert len(result["knn_per_epoch"]) == 1 and 0.0 <= result["final_knn_top1"] <= 1.0
        assert result["best_knn_top1"] == result["final_knn_top1"] and result["train_seconds"] > 0
        assert result["lr"] == 0.02  # --lr overrides the lightly recipe's 0.06 x 32/128
        # Per-method peak RSS from /proc: at least the ~0.3 GB that torch itself occupies.
        assert 0.2 < result["peak_host_memory_gb"] <= report["header"]["peak_host_memory_gb"]
    table = (out / "results.md").read_text()
    assert "| simclr | 1 | 0.02 |" in table and "| distillation | 1 | 0.02 |" in table

    with pytest.raises(SystemExit):  # another setup in the same --out would mix incomparable numbers
        run_benchmark(tmp_path, datasets_dir, "--methods", "simclr", "--epochs", "2")
    assert json.loads((out / "results.json").read_text()) == report

    summarize.main(["--results", str(tmp_path)])  # the overview of every run folder under tmp_path
    overview = (tmp_path / "README.md").read_text()
    simclr = report["results"][0]
    gain = simclr["final_knn_top1"] - simclr["random_init_knn_top1"]
    assert f"| simclr | {simclr['final_knn_top1']:.3f} ({gain:+.3f}) | 0.848 |" in overview
    assert (out / "knn_per_epoch.png").read_bytes().startswith(b"\x89PNG")
