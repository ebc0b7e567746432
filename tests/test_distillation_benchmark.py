"""The distillation benchmark trains a teacher, distills it into two students, races each against SimCLR
alone for the same time, and serves every model as ONNX, on real CIFAR-10 images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import distillation_benchmark
from benchmarks.benchmark_data import DATASETS
from benchmarks.distillation_benchmark import ModelResult, epochs_within, main, markdown, simclr_epochs_for
from tests.datasets import cut_cifar10

TRAIN_PER_CLASS = 4  # 40 images: 2 steps of 16
TEST_PER_CLASS = 2
TEACHER_SECONDS = 4.0  # a few epochs of 2 steps on the CPU
# torchvision's ResNet-18 at 32 px (its ImageNet stem: 16x fewer FLOPs than resnet18_cifar, the same features):
# a teacher several times the student's size that trains a few epochs within the budget on a CPU.
TEACHER = "resnet18"


def test_simclr_gets_the_epochs_that_fit_in_the_distilled_students_time() -> None:
    assert simclr_epochs_for(seconds=100.0, epoch_seconds=30.0) == 3
    assert simclr_epochs_for(seconds=100.0, epoch_seconds=40.0) == 2  # 2.5 rounds to even
    assert simclr_epochs_for(seconds=10.0, epoch_seconds=30.0) == 1  # never zero


def test_a_time_budget_gets_the_whole_epochs_that_fit_in_it() -> None:
    assert epochs_within(seconds=100.0, epoch_seconds=30.0) == 3
    assert epochs_within(seconds=100.0, epoch_seconds=26.0) == 3  # 3.8: a budget is not exceeded
    assert epochs_within(seconds=10.0, epoch_seconds=30.0) == 1  # never zero


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--teacher-epochs", "3", "--teacher-seconds", "60"], "not allowed with argument"),
        (["--student-epochs", "3", "--student-seconds", "60"], "not allowed with argument"),
        (["--teacher-seconds", "0"], "--teacher-seconds: must be more than 0, got 0"),
        (["--student-epochs", "0"], "--student-epochs: must be at least 1, got 0"),
    ],
)
def test_bad_lengths_fail_before_any_work(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                *arguments,
                "--datasets",
                str(tmp_path / "none"),
                "--work-dir",
                str(tmp_path / "work"),
                "--out",
                str(tmp_path),
            ]
        )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def model(role: str, backbone: str, knn: float) -> ModelResult:
    return ModelResult(role, backbone, "simclr", 2, 10.0, knn, knn, 0.1, 1.0, model_file=f"/models/{role}.pt")


def test_a_model_that_fails_to_export_records_why_and_the_others_are_still_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def onnx_throughput(path: Path, batch: int, seconds: float) -> tuple[float, str]:
        if path.stem == "teacher":
            raise RuntimeError("onnxscript is missing")
        return 500.0, "CPUExecutionProvider"

    monkeypatch.setattr(distillation_benchmark, "onnx_throughput", onnx_throughput)
    results = [model("teacher", "resnet50_cifar", 0.6), model("distilled", "resnet18_cifar", 0.5)]
    results.append(model("simclr alone", "resnet18_cifar", 0.4))
    distillation_benchmark.measure_serving(results, batch=4, seconds=0.1)
    teacher, distilled, alone = results
    assert teacher.onnx_images_per_second == 0 and "onnxscript is missing" in teacher.onnx_error
    assert distilled.onnx_images_per_second == alone.onnx_images_per_second == 500 and not distilled.onnx_error
    page = markdown(
        {
            "dataset": "cifar10",
            "device": "cpu",
            "torch": "2",
            "command": "c",
            "batch_size": 8,
            "precision": "fp32",
            "loader": "pil",
            "image_size": 32,
            "onnx_batch": 4,
        },
        results,
    )
    assert "| failed: RuntimeError('onnxscript is missing') |" in page
    # Without the teacher's throughput the summary compares accuracy only: no ratio against a zero.
    assert "+0.1000 against SimCLR alone in 10 s, -0.1000 against its teacher.\n" in page and "serves" not in page


@pytest.mark.slow
def test_teacher_students_and_time_matched_simclr_are_trained_scored_and_served(tmp_path: Path) -> None:
    spec = DATASETS["cifar10"]
    datasets = tmp_path / "datasets"
    cut_cifar10(datasets / spec.archive, TRAIN_PER_CLASS, TEST_PER_CLASS, top=spec.top)
    out = tmp_path / "out"
    # A small teacher and student keep the test short; the defaults are a ResNet-50 and two students.
    # The teacher trains for a time budget, the students for a number of epochs.
    # fmt: off
    main([
        "--teacher", TEACHER, "--students", "mobilenet_v3_small",
        "--teacher-seconds", str(TEACHER_SECONDS), "--student-epochs", "1", "--batch-size", "16", "--num-workers", "0",
        "--label-free-pairs", "8", "--onnx-batch", "4", "--onnx-seconds", "0.2", "--device", "cpu",
        "--datasets", str(datasets), "--work-dir", str(tmp_path / "work"), "--out", str(out),
    ])
    # fmt: on
    report = json.loads((out / "results.json").read_text())
    by_role = {r["role"]: r for r in report["results"]}
    assert list(by_role) == ["teacher", "distilled", "simclr alone"]
    teacher, distilled, alone = by_role["teacher"], by_role["distilled"], by_role["simclr alone"]
    assert (teacher["backbone"], teacher["method"]) == (TEACHER, "simclr")
    # The teacher got the whole epochs that its probe's last epoch says fit in the budget.
    assert teacher["budget_seconds"] == TEACHER_SECONDS and teacher["probe_epoch_seconds"] > 0
    assert teacher["epochs"] == epochs_within(TEACHER_SECONDS, teacher["probe_epoch_seconds"]) >= 2
    assert teacher["wall_seconds"] >= teacher["train_seconds"] + teacher["epochs"] * teacher["eval_seconds"] > 0
    probe_log = tmp_path / "work" / "cifar10" / f"teacher-probe-{TEACHER}" / "runs" / "simclr" / "knn_per_epoch.json"
    assert sorted(json.loads(probe_log.read_text())) == ["1", "2"]
    assert (distilled["backbone"], distilled["method"]) == ("mobilenet_v3_small", "distillation")
    assert distilled["epochs"] == 1 and distilled["budget_seconds"] is None
    assert (alone["backbone"], alone["method"]) == ("mobilenet_v3_small", "simclr")
    assert alone["epochs"] >= 1
    # The student is a fraction of the teacher, and every model was scored and served.
    assert distilled["parameters_millions"] < teacher["parameters_millions"] / 5
    for result in report["results"]:
        assert 0.0 <= result["knn_top1"] <= 1.0 and 0.0 <= result["random_init_knn_top1"] <= 1.0
        assert len(result["knn_per_epoch"]) == result["epochs"]
        assert result["train_seconds"] > 0
        assert result["onnx_images_per_second"] > 0 and result["onnx_provider"] == "CPUExecutionProvider"
        assert Path(result["model_file"]).is_file()
    page = (out / "results.md").read_text()
    assert "**mobilenet_v3_small**: distilled" in page and "against SimCLR alone" in page
    assert f"(fit in {TEACHER_SECONDS:g} s)" in page and f"teacher {TEACHER}: " in page
