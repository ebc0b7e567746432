"""Distillation as LightlyTrain sells it: a large teacher pretrained here, distilled into small students.

    # Full scale on a GPU: a CIFAR ResNet-50 SimCLR teacher (200 epochs), two students (100 epochs):
    python benchmarks/distillation_benchmark.py --loader device --teacher-epochs 200 --student-epochs 100 \
        --out benchmarks/results/gpu-distillation
    # The same in one 10-minute call: each model gets the epochs that fit in its time budget:
    python benchmarks/distillation_benchmark.py --loader device --teacher-seconds 180 --student-seconds 45 \
        --out benchmarks/results/gpu-distillation
    # Small scale on a CPU (a class-balanced subset, a few epochs):
    python benchmarks/distillation_benchmark.py --train-per-class 200 --test-per-class 100 --batch-size 64 \
        --teacher-epochs 4 --student-epochs 7 --num-workers 1 --label-free-pairs 256 \
        --out benchmarks/results/cpu-distillation

What is trained, in order (every model evaluated with kNN, k=200 and t=0.1, on the
whole test split after every epoch, as in :mod:`benchmarks.lightly_benchmark`):

1. the teacher: ``--teacher`` (a CIFAR ResNet-50 by default) with
   ``--teacher-method`` (SimCLR or DINO);
2. for each of ``--students`` (the CIFAR ResNet-18 and MobileNetV3-Small by default):
   the student distilled from that frozen teacher for ``--student-epochs``
   (LightlyTrain's distillation v1, :class:`ssl_core.methods.distillation.Distillation`);
3. the same student trained alone with SimCLR *for the same time*: a probe of
   ``PROBE_EPOCHS`` epochs measures SimCLR's epoch time for that student (its last
   epoch: the first also tunes cuDNN), and the run gets as many epochs as fit in the
   distilled student's training time (at least one). Both times are
   reported, so the match can be checked. The teacher's training is not counted:
   distillation's promise is to reuse a teacher that exists (DINOv2 in LightlyTrain).

``--teacher-seconds`` and ``--student-seconds`` replace the epoch counts with time
budgets, for machines that lend a GPU for minutes per call: a probe measures what one
epoch of that model costs (its last epoch's training and kNN evaluation), and the model
gets as many epochs as fit in the budget, so its cosine schedule still runs to the end.

Every model is then exported to ONNX (:func:`ssl_core.export.export_onnx`) and its
serving throughput measured with onnxruntime alone: images/s at ``--onnx-batch``
images per run, for ``--onnx-seconds``, on the execution provider onnxruntime picks
(CUDA where it is installed with GPU support, else all CPU cores).

Checkpoints live in ``--work-dir``, one folder per model, and a rerun resumes each
from its last epoch. Writes ``results.json`` and ``results.md`` to ``--out``. Needs
only torch, torchvision, onnx, onnxruntime and ssl_core, so it runs on a bare GPU
machine. At 32 px MobileNetV3 (stride 32) pools a 1x1 map: it is the size the
students are served at, and Imagenette at 128 px (``--dataset imagenette
--teacher resnet50 --students resnet18,mobilenet_v3_small``) is the fairer setting.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

# Run as a script (python benchmarks/distillation_benchmark.py): the repository root holds `benchmarks`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark_data import DATASETS, DatasetSpec, prepare  # noqa: E402
from benchmarks.benchmark_results import MethodResult  # noqa: E402
from benchmarks.knn_evaluation import Evaluation, EvaluationData, evaluation_data  # noqa: E402
from benchmarks.lightly_benchmark import (  # noqa: E402
    REPO_ROOT,
    add_compile_arguments,
    random_init_evaluation,
    run_method,
    trained_model_path,
)
from benchmarks.machine import device_description  # noqa: E402
from ssl_core.export import export_onnx  # noqa: E402
from ssl_core.model_file import load_embedding_model  # noqa: E402
from ssl_core.onnx_embedder import OnnxEmbedder  # noqa: E402
from ssl_core.onnx_format import OnnxMetadata  # noqa: E402
from ssl_core.precision import resolve_device  # noqa: E402

TEACHER_METHODS = ("simclr", "dino")
# A probe's epochs: the first tunes cuDNN and warms the allocator, the last measures a steady epoch.
PROBE_EPOCHS = 2


@dataclass
class ModelResult:
    """One trained model: how it was trained, its kNN accuracy, and how fast it serves."""

    role: str  # teacher | distilled | simclr alone
    backbone: str
    method: str
    epochs: int
    train_seconds: float
    knn_top1: float
    best_knn_top1: float
    random_init_knn_top1: float
    parameters_millions: float
    onnx_images_per_second: float = 0.0
    onnx_provider: str = ""
    onnx_error: str = ""  # why the export or the serving measurement failed, if it did
    knn_per_epoch: list[float] | None = None
    model_file: str = ""
    eval_seconds: float = 0.0  # one kNN evaluation (and label-free scores), the mean over the epochs
    wall_seconds: float = 0.0  # building the model to its saved file, evaluations included
    last_epoch_train_seconds: float = 0.0  # the last epoch alone: past the first epoch's cuDNN tuning
    last_epoch_eval_seconds: float = 0.0
    budget_seconds: float | None = None  # the time budget its epochs were chosen for, if any
    probe_epoch_seconds: float | None = None  # one epoch's training and evaluation, as the probe measured it


def model_args(args: argparse.Namespace, name: str, epochs: int) -> argparse.Namespace:
    """The lightly benchmark's arguments for one model: its own work folder (checkpoints, model.pt) and epochs."""
    model = copy.copy(args)
    model.work_dir = args.work_dir / name
    model.epochs = epochs
    return model


def train_model(
    role: str,
    method: str,
    backbone: str,
    epochs: int,
    spec: DatasetSpec,
    root: Path,
    args: argparse.Namespace,
    data: EvaluationData,
    random_inits: dict[str, Evaluation],
    teacher: Path | None = None,
) -> ModelResult:
    """Trains (or resumes) one model with :func:`run_method` in its own folder of ``--work-dir``.

    ``random_inits`` caches each backbone's random-init evaluation across calls.
    """
    model_spec = replace(spec, backbone=backbone)
    run_args = model_args(args, f"{role.replace(' ', '-')}-{backbone}", epochs)
    if backbone not in random_inits:
        random_inits[backbone] = random_init_evaluation(model_spec, data, run_args)
    random_init = random_inits[backbone]
    print(f"== {role}: {backbone} with {method}, {epochs} epoch(s)", flush=True)
    trained: MethodResult = run_method(method, model_spec, root, run_args, teacher, data, random_init)
    path = trained_model_path(run_args, method)
    module, _ = load_embedding_model(path)
    result = ModelResult(
        role=role,
        backbone=backbone,
        method=method,
        epochs=epochs,
        train_seconds=trained.train_seconds,
        knn_top1=trained.final_knn_top1,
        best_knn_top1=trained.best_knn_top1,
        random_init_knn_top1=random_init.knn_top1,
        parameters_millions=sum(p.numel() for p in module.parameters()) / 1e6,
        knn_per_epoch=trained.knn_per_epoch,
        model_file=str(path),
        eval_seconds=trained.mean_eval_seconds or 0.0,
        wall_seconds=trained.wall_seconds or 0.0,
    )
    if trained.per_epoch:
        last = trained.per_epoch[-1]
        result.last_epoch_train_seconds = last.get("train_seconds") or 0.0
        result.last_epoch_eval_seconds = last.get("eval_seconds") or 0.0
    return result


def epochs_within(seconds: float, epoch_seconds: float) -> int:
    """Whole epochs that fit in ``seconds`` at ``epoch_seconds`` each, at least one.

    Rounded down, unlike :func:`simclr_epochs_for`: a budget is a limit, not a match.
    """
    return max(1, math.floor(seconds / max(epoch_seconds, 1e-9)))


def train_within_budget(
    role: str,
    method: str,
    backbone: str,
    epochs: int,
    budget_seconds: float | None,
    train: Callable[..., ModelResult],
) -> ModelResult:
    """``train(role, method, backbone, epochs)``, or as many epochs as fit in ``budget_seconds``.

    With a budget, a probe of the same model (its own folder, so a rerun finds it and picks
    the same epochs) measures an epoch's training and kNN evaluation on its last epoch. The
    first also tunes cuDNN's algorithms for the model's shapes (on an H200, SimCLR's first
    epoch took 2.74 s, its second 1.81 s), which the run after it, in the same process,
    does not pay again.
    """
    if budget_seconds is None:
        return train(role, method, backbone, epochs)
    probe = train(f"{role} probe", method, backbone, PROBE_EPOCHS)
    epoch_seconds = probe.last_epoch_train_seconds + probe.last_epoch_eval_seconds
    result = train(role, method, backbone, epochs_within(budget_seconds, epoch_seconds))
    result.budget_seconds, result.probe_epoch_seconds = budget_seconds, epoch_seconds
    return result


def onnx_throughput(model_path: Path, batch: int, seconds: float) -> tuple[float, str]:
    """Images/s of the exported model under onnxruntime, and the execution provider that ran it."""
    module, info = load_embedding_model(model_path)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(module, OnnxMetadata.from_info(info), Path(folder) / "model.onnx", opset=18)
        embedder = OnnxEmbedder(onnx_path)
        inputs = np.random.default_rng(0).standard_normal((batch, 3, info.image_size, info.image_size), np.float32)
        embedder.embed_arrays(inputs)  # the first run allocates and plans
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            embedder.embed_arrays(inputs)
            runs += 1
        return runs * batch / elapsed, embedder.provider


def simclr_epochs_for(seconds: float, epoch_seconds: float) -> int:
    """SimCLR epochs that fit in ``seconds`` at ``epoch_seconds`` each, at least one."""
    return max(1, round(seconds / max(epoch_seconds, 1e-9)))


def run(args: argparse.Namespace, spec: DatasetSpec, root: Path) -> list[ModelResult]:
    data = evaluation_data(spec, root, args)
    inits: dict[str, Evaluation] = {}

    def train(role: str, method: str, backbone: str, epochs: int, teacher: Path | None = None) -> ModelResult:
        return train_model(role, method, backbone, epochs, spec, root, args, data, inits, teacher=teacher)

    teacher = train_within_budget(
        "teacher", args.teacher_method, args.teacher, args.teacher_epochs, args.teacher_seconds, train
    )
    results = [teacher]
    write_results(args, results)  # a call cut short later still leaves the teacher's figures
    for student in args.students:
        distilled = train_within_budget(
            "distilled",
            "distillation",
            student,
            args.student_epochs,
            args.student_seconds,
            functools.partial(train, teacher=Path(teacher.model_file)),
        )
        probe = train("simclr probe", "simclr", student, PROBE_EPOCHS)
        epochs = simclr_epochs_for(distilled.train_seconds, probe.last_epoch_train_seconds)
        alone = train("simclr alone", "simclr", student, epochs)
        results += [distilled, alone]
        write_results(args, results)
    measure_serving(results, args.onnx_batch, args.onnx_seconds)
    return results


def measure_serving(results: list[ModelResult], batch: int, seconds: float) -> None:
    """Each model's ONNX throughput, in place; a model whose export or run fails records why, and the rest go on."""
    for result in results:
        try:
            result.onnx_images_per_second, result.onnx_provider = onnx_throughput(
                Path(result.model_file), batch, seconds
            )
        except Exception as error:  # noqa: BLE001 - the trained models' figures stand without it
            result.onnx_error = repr(error)[:500]
            print(f"  ONNX {result.role} {result.backbone} failed: {result.onnx_error}", flush=True)
            continue
        print(f"  ONNX {result.role} {result.backbone}: {result.onnx_images_per_second:,.0f} images/s", flush=True)


def header(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    return {
        "dataset": args.dataset,
        "device": device_description(device),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "loader": args.loader,
        "image_size": DATASETS[args.dataset].image_size,
        "train_per_class": args.train_per_class,
        "test_per_class": args.test_per_class,
        "onnx_batch": args.onnx_batch,
        "teacher_seconds": args.teacher_seconds,
        "student_seconds": args.student_seconds,
        "command": "python benchmarks/distillation_benchmark.py " + " ".join(args.argv),
    }


def write_results(args: argparse.Namespace, results: list[ModelResult]) -> None:
    """``results.json`` and ``results.md``; written after every student, so a crash loses none before it."""
    head = header(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"header": head, "results": [asdict(r) for r in results]}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(head, results))


def markdown(head: dict, results: list[ModelResult]) -> str:
    lines = [
        f"# Distillation benchmark: {head['dataset']} ({head['device']}, torch {head['torch']})",
        "",
        f"`{head['command']}`",
        "",
        f"Batch {head['batch_size']}, {head['precision']}, {head['loader']} loader, {head['image_size']} px. "
        "kNN top-1 (k=200, t=0.1) on the test split; train time excludes the per-epoch evaluations; "
        f"ONNX throughput with onnxruntime alone at {head['onnx_batch']} images per run; "
        "wall time from building the model to its saved file, every evaluation included.",
        "",
        "| model | backbone | method | epochs | params | train time | wall time | kNN top-1 | best (any epoch) "
        "| random init | ONNX images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.onnx_error:
            throughput = f"failed: {r.onnx_error}"
        elif r.onnx_images_per_second:
            throughput = f"{r.onnx_images_per_second:,.0f} ({r.onnx_provider})"
        else:
            throughput = "n/a"
        epochs = f"{r.epochs}" if r.budget_seconds is None else f"{r.epochs} (fit in {r.budget_seconds:g} s)"
        lines.append(
            f"| {r.role} | {r.backbone} | {r.method} | {epochs} | {r.parameters_millions:.1f} M "
            f"| {r.train_seconds:.0f} s | {r.wall_seconds:.0f} s | {r.knn_top1:.4f} | {r.best_knn_top1:.4f} "
            f"| {r.random_init_knn_top1:.4f} | {throughput} |"
        )
    budgeted = [r for r in results if r.budget_seconds is not None]
    if budgeted:
        lines += [
            "",
            f"Epochs from a time budget: a {PROBE_EPOCHS}-epoch probe of the same model measured an epoch's "
            "training and evaluation on its last epoch ("
            + ", ".join(f"{r.role} {r.backbone}: {r.probe_epoch_seconds:.1f} s" for r in budgeted)
            + "), and the model got the whole epochs that fit.",
        ]
    teacher = next((r for r in results if r.role == "teacher"), None)
    for distilled in (r for r in results if r.role == "distilled"):
        alone = next((r for r in results if r.role == "simclr alone" and r.backbone == distilled.backbone), None)
        if teacher is None or alone is None:
            continue
        serving = (  # measured for both only once every model is trained, and only where the export worked
            f"; it serves {distilled.onnx_images_per_second / teacher.onnx_images_per_second:.1f}x "
            "as many images/s as the teacher"
            if distilled.onnx_images_per_second and teacher.onnx_images_per_second
            else ""
        )
        lines += [
            "",
            f"**{distilled.backbone}**: distilled {distilled.knn_top1:.4f} in {distilled.train_seconds:.0f} s, "
            f"{distilled.knn_top1 - alone.knn_top1:+.4f} against SimCLR alone in {alone.train_seconds:.0f} s, "
            f"{distilled.knn_top1 - teacher.knn_top1:+.4f} against its teacher{serving}.",
        ]
    return "\n".join(lines) + "\n"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("--teacher", default="resnet50_cifar", help="the teacher's backbone")
    parser.add_argument("--teacher-method", choices=TEACHER_METHODS, default="simclr")
    teacher_length = parser.add_mutually_exclusive_group()
    teacher_length.add_argument("--teacher-epochs", type=positive_int, default=200)
    teacher_length.add_argument(
        "--teacher-seconds", type=positive_float, help="instead of --teacher-epochs: the epochs that fit in this time"
    )
    parser.add_argument(
        "--students", default="resnet18_cifar,mobilenet_v3_small", help="comma-separated student backbones"
    )
    student_length = parser.add_mutually_exclusive_group()
    student_length.add_argument("--student-epochs", type=positive_int, default=100)
    student_length.add_argument(
        "--student-seconds",
        type=positive_float,
        help="instead of --student-epochs: each distilled student gets the epochs that fit in this time",
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=None, help="peak lr for every model (default: the lightly recipe)")
    parser.add_argument("--train-per-class", type=int, default=None, help="class-balanced subset (default: all)")
    parser.add_argument("--test-per-class", type=int, default=None, help="class-balanced subset (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16-mixed", choices=("fp32", "bf16-mixed"))
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--loader", choices=("pil", "device"), default="pil")
    add_compile_arguments(parser)
    parser.set_defaults(optimizer="auto", simclr_forward="joint")  # lightly_benchmark's defaults
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-free-pairs", type=int, default=1024)
    parser.add_argument("--onnx-batch", type=int, default=64)
    parser.add_argument("--onnx-seconds", type=float, default=5.0)
    parser.add_argument("--no-resume", dest="resume", action="store_false")
    parser.add_argument("--datasets", type=Path, default=REPO_ROOT.parent / "shared" / "datasets")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/ssl-distillation-benchmark"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    args.students = tuple(args.students.split(","))
    args.work_dir = args.work_dir / args.dataset
    spec = DATASETS[args.dataset]
    root = prepare(spec, args.datasets, args.work_dir, args.train_per_class, args.test_per_class)
    results = run(args, spec, root)
    write_results(args, results)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
