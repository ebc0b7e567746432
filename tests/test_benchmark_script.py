"""The benchmark script runs end to end on a tiny subset and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import summarize
from benchmarks.lightly_benchmark import main
from tests.conftest import CIFAR_ARCHIVE, SHARED_DATASETS


def run_benchmark(tmp_path: Path, *options: str) -> None:
    main(["--dataset", "cifar10", "--batch-size", "32", "--lr", "0.02", "--train-per-class", "8",
          "--test-per-class", "4", "--num-workers", "0", "--precision", "fp32", "--device", "cpu",
          "--datasets", str(SHARED_DATASETS), "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
          *options])


@pytest.mark.skipif(not CIFAR_ARCHIVE.is_file(), reason="needs ../shared/datasets")
def test_methods_run_in_separate_calls_add_up_to_one_table(tmp_path: Path) -> None:
    """As on a GPU machine with a time limit per call: one method per call, results merged."""
    out = tmp_path / "out"
    run_benchmark(tmp_path, "--methods", "simclr", "--epochs", "1")
    run_benchmark(tmp_path, "--methods", "distillation", "--epochs", "1")  # its teacher: the SimCLR of call 1
    report = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in report["results"]] == ["simclr", "distillation"]
    assert len(report["header"]["commands"]) == 2 and "--methods distillation" in report["header"]["commands"][1]
    assert report["header"]["train_images"] == 80 and report["header"]["test_images"] == 40
    for result in report["results"]:
        assert len(result["knn_per_epoch"]) == 1 and 0.0 <= result["final_knn_top1"] <= 1.0
        assert result["best_knn_top1"] == result["final_knn_top1"] and result["train_seconds"] > 0
        assert result["lr"] == 0.02  # --lr overrides the lightly recipe's 0.06 x 32/128
        # Per-method peak RSS from /proc: at least the ~0.3 GB that torch itself occupies.
        assert 0.2 < result["peak_host_memory_gb"] <= report["header"]["peak_host_memory_gb"]
    table = (out / "results.md").read_text()
    assert "| simclr | 1 | 0.02 |" in table and "| distillation | 1 | 0.02 |" in table

    with pytest.raises(SystemExit):  # another setup in the same --out would mix incomparable numbers
        run_benchmark(tmp_path, "--methods", "simclr", "--epochs", "2")
    assert json.loads((out / "results.json").read_text()) == report

    summarize.main(["--results", str(tmp_path)])  # the overview of every run folder under tmp_path
    overview = (tmp_path / "README.md").read_text()
    simclr = report["results"][0]
    gain = simclr["final_knn_top1"] - simclr["random_init_knn_top1"]
    assert f"| simclr | {simclr['final_knn_top1']:.3f} ({gain:+.3f}) | 0.848 |" in overview
    assert (out / "knn_per_epoch.png").read_bytes().startswith(b"\x89PNG")
