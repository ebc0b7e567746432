"""Reproduce the lightly benchmarks: every method, kNN (k=200, t=0.1) after each epoch.

    # CIFAR-10, ResNet-18 CIFAR variant, the lightly recipe (batch 512, 200 epochs):
    python benchmarks/lightly_benchmark.py --dataset cifar10 --epochs 200 --out benchmarks/results/gpu-cifar10
    # Imagenette at 128 px with a torchvision ResNet-18:
    python benchmarks/lightly_benchmark.py --dataset imagenette --epochs 200 --out benchmarks/results/gpu-imagenette
    # A CPU smoke run on a class-balanced subset:
    python benchmarks/lightly_benchmark.py --dataset cifar10 --epochs 1 --batch-size 128 \
        --train-per-class 100 --test-per-class 100 --out benchmarks/results/cpu-cifar10-1epoch

Data comes from ../shared/datasets (``--datasets``). Each method trains with the
lightly CIFAR-10 recipe (SGD momentum 0.9, weight decay 5e-4, lr 0.06 x batch/128
with cosine decay, SimSiam a fixed 0.06; SimCLR-style views, DINO multi-crop) and
is evaluated with kNN on the whole test split after every epoch, so both the
final-epoch and best-epoch accuracy are reported, with training time and peak GPU
and host memory per method. ``--lr`` replaces the recipe's learning rate.
``distillation`` runs last and distills from the best model trained in this
``--work-dir``.

Checkpoints live in ``--work-dir``: rerunning the same command resumes every
method from its last finished epoch (``--epochs`` can grow between runs only by
starting over, since the cosine schedule depends on it). Methods can run in
separate calls (``--methods simclr``, then ``--methods moco``, ...; e.g. one per
call on a machine with a time limit per command): results of the same setup in
``--out`` are merged into one ``results.json`` and ``results.md``. Needs only
torch, torchvision and ssl_core, so it runs on a bare GPU machine;
``benchmarks/summarize.py`` then tabulates and plots every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ssl_core.augment import Normalization, eval_transform
from ssl_core.backbones import build_backbone
from ssl_core.data import ManifestDataset
from ssl_core.embed import compute_embeddings
from ssl_core.engine import EpochStats, TrainConfig, train
from ssl_core.knn import knn_evaluate
from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, write_manifest
from ssl_core.methods import METHOD_NAMES, DINOConfig, MultiCropConfig
from ssl_core.methods.factory import build_method, method_class
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from ssl_core.precision import resolve_device, seed_everything
from ssl_core.teachers import load_teacher_file

REPO_ROOT = Path(__file__).resolve().parents[1]
# Methods that learn from a teacher run last: their teacher is a method trained before them.
ALL_METHODS = tuple(sorted(METHOD_NAMES, key=lambda name: method_class(name).needs_teacher))


@dataclass(frozen=True)
class DatasetSpec:
    archive: str
    top: str
    train_split: str
    test_split: str
    image_size: int
    backbone: str
    blur_prob: float


DATASETS = {
    # The lightly CIFAR-10 benchmark: ResNet-18 with the CIFAR stem, no blur at 32 px.
    "cifar10": DatasetSpec("cifar10-jpeg.tar.gz", "cifar10", "train", "test", 32, "resnet18_cifar", 0.0),
    # The lightly Imagenette benchmark at 128 px: a torchvision ResNet-18, blur on.
    "imagenette": DatasetSpec("imagenette-128.tar.gz", "imagenette", "train", "val", 128, "resnet18", 0.5),
}


@dataclass
class MethodResult:
    method: str
    epochs: int = 0
    batch_size: int = 0
    lr: float = 0.0
    knn_per_epoch: list[float] = field(default_factory=list)
    final_knn_top1: float = 0.0
    best_knn_top1: float = 0.0
    best_epoch: int = 0
    random_init_knn_top1: float = 0.0
    train_seconds: float = 0.0
    peak_gpu_memory_gb: float | None = None
    peak_host_memory_gb: float | None = None
    collapsed: bool = False


def prepare(
    spec: DatasetSpec, datasets_dir: Path, work_dir: Path, train_per_class: int | None, test_per_class: int | None
) -> Path:
    """Extracts the archive (once) and writes a manifest of the selected images."""
    extracted = work_dir / "data"
    if not (extracted / spec.top).is_dir():
        extracted.mkdir(parents=True, exist_ok=True)
        with tarfile.open(datasets_dir / spec.archive) as archive:
            archive.extractall(extracted, filter="data")
    root = extracted / spec.top
    quota = {spec.train_split: train_per_class, spec.test_split: test_per_class}
    records = []
    for split, limit in quota.items():
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for image in sorted(class_dir.iterdir())[:limit]:
                # sha256 is for provenance in the pipeline; the benchmark reads fixed archives.
                records.append(ManifestRecord(image.relative_to(root).as_posix(), "", class_dir.name, split, 0, 0))
    write_manifest(records, root / MANIFEST_NAME)
    return root


def reset_peak_host_memory() -> None:
    """Restarts the process's peak-RSS counter (Linux: ``/proc/self/clear_refs``), so each method gets its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_host_memory_gb() -> float | None:
    """Peak resident memory since the last reset (``VmHWM``), or None where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kilobytes = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kilobytes is None else kilobytes / 2**20


def trained_model_path(args: argparse.Namespace, method: str) -> Path:
    """Where ``run_method`` saves a method's backbone; distillation reads its teacher from there."""
    return args.work_dir / "runs" / method / "model.pt"


def train_config(args: argparse.Namespace, method: str) -> TrainConfig:
    # The lightly recipe: 0.06 x batch/128, or a fixed 0.06 where the method says so (SimSiam); --lr overrides it.
    lr = args.lr if args.lr is not None else method_class(method).peak_lr(0.06, args.batch_size)
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        num_workers=args.num_workers,
    )


def knn_top1(
    backbone: torch.nn.Module, bank: ManifestDataset, queries: ManifestDataset, args: argparse.Namespace
) -> float:
    device = resolve_device(args.device)
    backbone.to(device)
    bank_x, bank_y = compute_embeddings(backbone, bank, 512, args.num_workers, device, args.precision)
    query_x, query_y = compute_embeddings(backbone, queries, 512, args.num_workers, device, args.precision)
    return knn_evaluate(bank_x, bank_y, query_x, query_y, len(bank.class_names), k=200, temperature=0.1).top1


def evaluation_splits(spec: DatasetSpec, root: Path) -> tuple[ManifestDataset, ManifestDataset]:
    """The kNN bank (train split) and queries (test split) with the eval transform."""
    evaluation = eval_transform(spec.image_size, Normalization())
    return ManifestDataset(root, [spec.train_split], evaluation), ManifestDataset(root, [spec.test_split], evaluation)


def random_init_knn(spec: DatasetSpec, root: Path, args: argparse.Namespace) -> float:
    """kNN of the untrained backbone, seeded like every method's starting point."""
    seed_everything(args.seed)
    return knn_top1(build_backbone(spec.backbone, spec.image_size).module, *evaluation_splits(spec, root), args)


def recipe(name: str, spec: DatasetSpec) -> object:
    """The method's default recipe; DINO's crops get the dataset's blur (none at 32 px), as in lightly."""
    default = method_class(name).recipe()
    if isinstance(default, DINOConfig):
        blur = (spec.blur_prob, spec.blur_prob / 5, spec.blur_prob)
        return replace(default, multicrop=MultiCropConfig(blur_probs=blur))
    return default


def run_method(
    name: str,
    spec: DatasetSpec,
    root: Path,
    args: argparse.Namespace,
    teacher_path: Path | None,
    random_init_top1: float,
) -> MethodResult:
    norm = Normalization()
    bank, queries = evaluation_splits(spec, root)
    seed_everything(args.seed)
    backbone = build_backbone(spec.backbone, spec.image_size)
    train_set = ManifestDataset(root, [spec.train_split])
    teacher = load_teacher_file(teacher_path) if teacher_path is not None else None
    method = build_method(name, backbone, recipe(name, spec), teacher=teacher, num_images=len(train_set))
    train_set.transform = method.train_transform(method.view_config(spec.image_size, blur_prob=spec.blur_prob), norm)

    config = train_config(args, name)
    method_dir = args.work_dir / "runs" / name
    log_path = method_dir / "knn_per_epoch.json"
    knn_log: dict[str, float] = json.loads(log_path.read_text()) if log_path.exists() and args.resume else {}
    result = MethodResult(name, args.epochs, config.batch_size, config.lr, random_init_knn_top1=random_init_top1)
    eval_seconds = 0.0

    def evaluate_epoch(stats: EpochStats) -> None:
        nonlocal eval_seconds
        started = time.perf_counter()
        knn_log[str(stats.epoch)] = knn_top1(method.backbone, bank, queries, args)
        eval_seconds += time.perf_counter() - started
        log_path.write_text(json.dumps(knn_log, indent=2))
        print(
            f"  {name} epoch {stats.epoch}: loss {stats.loss:.4f} kNN top-1 {knn_log[str(stats.epoch)]:.4f}", flush=True
        )

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_host_memory()
    started = time.perf_counter()
    method_dir.mkdir(parents=True, exist_ok=True)
    history = train(
        method,
        train_set,
        config,
        method_dir / "checkpoints",
        resume=args.resume,
        fingerprint=f"{name}-{args.dataset}-{args.epochs}-{args.batch_size}-{config.lr}-{args.seed}",
        on_epoch_end=evaluate_epoch,
    )
    # Training time only: the per-epoch kNN runs inside the loop but is not training.
    result.train_seconds = time.perf_counter() - started - eval_seconds
    if device.type == "cuda":
        result.peak_gpu_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    result.peak_host_memory_gb = peak_host_memory_gb()
    result.knn_per_epoch = [knn_log[str(e)] for e in range(1, args.epochs + 1) if str(e) in knn_log]
    result.final_knn_top1 = result.knn_per_epoch[-1]
    result.best_knn_top1 = max(result.knn_per_epoch)
    result.best_epoch = result.knn_per_epoch.index(result.best_knn_top1) + 1
    result.collapsed = bool(history.epochs and history.epochs[-1].collapsed)
    info = EmbeddingModelInfo(spec.backbone, backbone.feature_dim, spec.image_size, norm, name)
    save_embedding_model(trained_model_path(args, name), method.backbone.cpu(), info)
    return result


def markdown(results: list[MethodResult], header: dict) -> str:
    lines = [
        f"# {header['dataset']} kNN benchmark ({header['device']})",
        "",
        "Commands (in order; a later run of a method replaced its earlier result):",
        *[f"- `{command}`" for command in header.get("commands", [header.get("command")])],
        "",
        f"Train images: {header['train_images']}, test images: {header['test_images']}, "
        f"backbone {header['backbone']}, batch {header['batch_size']}, {header['epochs']} epoch(s), "
        f"{header['precision']}.",
        "",
        "| method | epochs | lr | kNN top-1 final | kNN top-1 best (epoch) | random init | train time (no eval) "
        "| peak GPU mem | peak host mem |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        memory = f"{r.peak_gpu_memory_gb:.1f} GB" if r.peak_gpu_memory_gb is not None else "n/a (CPU)"
        host = f"{r.peak_host_memory_gb:.1f} GB" if r.peak_host_memory_gb is not None else "n/a"
        duration = f"{r.train_seconds:.0f} s" if r.train_seconds < 600 else f"{r.train_seconds / 60:.1f} min"
        lines.append(
            f"| {r.method} | {r.epochs} | {r.lr:g} | {r.final_knn_top1:.4f} | {r.best_knn_top1:.4f} ({r.best_epoch}) | "
            f"{r.random_init_knn_top1:.4f} | {duration} | {memory} | {host} |"
        )
    lines += [
        "",
        "Peak host memory per method is the process's peak RSS while that method trained and was "
        f"evaluated; over the whole run it was {header['peak_host_memory_gb']:.1f} GB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("--methods", default="all", help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate for every selected method (default: the lightly recipe)",
    )
    parser.add_argument("--train-per-class", type=int, default=None, help="class-balanced subset (default: all)")
    parser.add_argument("--test-per-class", type=int, default=None, help="class-balanced subset (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16-mixed", choices=("fp32", "bf16-mixed"))
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="start every method from scratch")
    parser.add_argument("--datasets", type=Path, default=REPO_ROOT.parent / "shared" / "datasets")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/ssl-benchmark"))
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    args.work_dir = args.work_dir / args.dataset
    methods = ALL_METHODS if args.methods == "all" else tuple(args.methods.split(","))
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
    # A method that needs a teacher learns from one trained before it in this run.
    methods = tuple(m for m in ALL_METHODS if m in methods)

    spec = DATASETS[args.dataset]
    root = prepare(spec, args.datasets, args.work_dir, args.train_per_class, args.test_per_class)
    device = resolve_device(args.device)
    setup = {
        "dataset": args.dataset,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "backbone": spec.backbone,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "precision": args.precision,
        "train_images": len(ManifestDataset(root, [spec.train_split])),
        "test_images": len(ManifestDataset(root, [spec.test_split])),
        "torch": torch.__version__,
    }
    # Methods may run in separate invocations (one per GPU call): results of the same
    # setup in --out are kept, and a method run again replaces its old result.
    previous_header, finished = previous_results(args.out, setup, parser)
    random_init_top1 = random_init_knn(spec, root, args)
    print(f"random-init kNN top-1: {random_init_top1:.4f}", flush=True)
    for name in methods:
        teacher = None
        if method_class(name).needs_teacher:
            candidates = [
                r
                for r in finished.values()
                if not method_class(r.method).needs_teacher and trained_model_path(args, r.method).exists()
            ]
            if not candidates:
                parser.error(f"{name} needs another method trained in this --work-dir to serve as its teacher")
            best = max(candidates, key=lambda r: r.final_knn_top1)
            teacher = trained_model_path(args, best.method)
            print(f"{name} teacher: {best.method} (kNN {best.final_knn_top1:.4f})")
        print(f"== {name}", flush=True)
        finished[name] = run_method(name, spec, root, args, teacher, random_init_top1)

    results = [finished[m] for m in ALL_METHODS if m in finished]
    command = "python benchmarks/lightly_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = {
        **setup,
        "commands": previous_header.get("commands", []) + [command],
        # Each method reset the peak counter: the run's peak is the largest of theirs.
        "peak_host_memory_gb": max(
            [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20]
            + [r.peak_host_memory_gb for r in results if r.peak_host_memory_gb is not None]
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"header": header, "results": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    (args.out / "results.md").write_text(markdown(results, header))
    print(markdown(results, header))


def previous_results(out: Path, setup: dict, parser: argparse.ArgumentParser) -> tuple[dict, dict[str, MethodResult]]:
    """The header and per-method results already in ``out/results.json``, if it holds the same setup.

    Raises (via ``parser.error``) when it holds another setup, so no result is overwritten by accident.
    """
    path = out / "results.json"
    if not path.exists():
        return {}, {}
    report = json.loads(path.read_text())
    differs = {
        key: (report["header"].get(key), value) for key, value in setup.items() if report["header"].get(key) != value
    }
    if differs:
        parser.error(f"{path} holds results of another setup ({differs}, as (there, now)); choose another --out")
    header = report["header"]
    header.setdefault("commands", [header["command"]] if "command" in header else [])  # files from before "commands"
    return header, {r["method"]: MethodResult(**r) for r in report["results"]}


if __name__ == "__main__":
    main()
