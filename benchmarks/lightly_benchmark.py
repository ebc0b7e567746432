"""Reproduce the lightly benchmarks: every method, kNN (k=200, t=0.1) and label-free scores after each epoch.

    # CIFAR-10, ResNet-18 CIFAR variant, the lightly recipe (batch 512, 200 epochs):
    python benchmarks/lightly_benchmark.py --dataset cifar10 --epochs 200 --out benchmarks/results/gpu-cifar10
    # Imagenette at 128 px with a torchvision ResNet-18:
    python benchmarks/lightly_benchmark.py --dataset imagenette --epochs 200 --out benchmarks/results/gpu-imagenette
    # The GPU fast path: images decoded once onto the device, views rendered there in batches:
    python benchmarks/lightly_benchmark.py --dataset cifar10 --loader device --epochs 200 \
        --out benchmarks/results/gpu-cifar10
    # A CPU smoke run on a class-balanced subset:
    python benchmarks/lightly_benchmark.py --dataset cifar10 --epochs 1 --batch-size 128 \
        --train-per-class 100 --test-per-class 100 --out benchmarks/results/cpu-cifar10-1epoch

Data comes from ../shared/datasets (``--datasets``). Each method trains with the
lightly CIFAR-10 recipe (SGD momentum 0.9, weight decay 5e-4, lr 0.06 x batch/128
with cosine decay, SimSiam a fixed 0.06; SimCLR-style views; DINO on 2 global crops on
CIFAR-10 and 2 global + 6 local on Imagenette, as lightly's benchmarks) and
is evaluated with kNN on the whole test split after every epoch, so both the
final-epoch and best-epoch accuracy are reported, with training time and peak GPU
and host memory per method. ``--lr`` replaces the recipe's learning rate, and ``--backbone lightly_resnet18_cifar`` the
project's CIFAR ResNet-18 with the one lightly's benchmark builds (from the lightly package),
to tell the network's share of a gap from the engine's.
``distillation`` runs last and distills from the best model trained in this
``--work-dir``.

Every evaluation (each epoch, and the random-init backbone) also records the
label-free scores of :mod:`ssl_core.label_free`, as the pipeline's evaluate stage
defines them: RankMe of the train-split eval embeddings (the kNN bank), alignment
and uniformity on two standard views of ``--label-free-pairs`` train images, the
same seeded sample and views for every checkpoint.
``benchmarks/label_free_vs_knn.py`` then measures how well they predict kNN.

``--loader pil`` (the default) feeds training through a DataLoader that decodes and
augments every view with PIL on the host, as the pipeline does on a CPU.
``--loader device`` decodes the dataset once into uint8 tensors on the device
(:class:`ssl_core.device_data.DeviceImages`), renders the views there a batch at a
time (:mod:`ssl_core.batch_augment`) and evaluates on the device: the kNN bank and
queries are embedded from the decoded tensors, and the label-free pairs are two
batched standard views of the same seeded sample.

Checkpoints live in ``--work-dir``: rerunning the same command resumes every
method from its last finished epoch (``--epochs`` can grow between runs only by
starting over, since the cosine schedule depends on it). Methods can run in
separate calls (``--methods simclr``, then ``--methods moco``, ...; e.g. one per
call on a machine with a time limit per command): results of the same setup in
``--out`` are merged into one ``results.json`` and ``results.md``, written after
every method; a method whose loss diverges is reported as failed and the others
still run. Needs only
torch, torchvision and ssl_core, so it runs on a bare GPU machine;
``benchmarks/summarize.py`` then tabulates and plots every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

# Run as a script (python benchmarks/lightly_benchmark.py): the repository root holds `benchmarks`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark_data import DATASETS, DatasetSpec, prepare  # noqa: E402
from benchmarks.benchmark_results import MethodResult, previous_results, read_epoch_log, write_results  # noqa: E402
from benchmarks.knn_evaluation import Evaluation, EvaluationData, evaluate, evaluation_data  # noqa: E402
from benchmarks.lightly_reference import LIGHTLY_CIFAR10_BACKBONE, import_lightly, lightly_cifar10_backbone  # noqa: E402
from benchmarks.machine import device_description, peak_host_memory_gb, reset_peak_host_memory  # noqa: E402
from benchmarks.wall_clock import CallClock  # noqa: E402
from ssl_core.augment import Normalization
from ssl_core.backbones import Backbone, available_backbones, build_backbone, infer_feature_dim
from ssl_core.config_checks import PRECISIONS
from ssl_core.data import ManifestDataset
from ssl_core.engine import COMPILE_MODES, COMPILE_SCOPES, EpochStats, TrainConfig, train
from ssl_core.manifest import sha256_file
from ssl_core.methods import METHOD_NAMES, DINOConfig, MultiCropConfig, SimCLRConfig
from ssl_core.methods.factory import build_method, method_class
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from ssl_core.optimizers import OPTIMIZERS
from ssl_core.precision import resolve_device, seed_everything
from ssl_core.teachers import load_teacher_file

REPO_ROOT = Path(__file__).resolve().parents[1]
# Methods that learn from a teacher run last: their teacher is a method trained before them.
ALL_METHODS = tuple(sorted(METHOD_NAMES, key=lambda name: method_class(name).needs_teacher))


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
        optimizer=method_class(method).chosen_optimizer(args.optimizer),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        num_workers=args.num_workers,
        compile=args.compile,
        compile_mode=args.compile_mode,
    )


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compile [networks|step]`` and ``--compile-mode``, which :func:`train_config` hands to the engine."""
    parser.add_argument(
        "--compile",
        nargs="?",
        const="networks",
        default="off",
        choices=COMPILE_SCOPES,
        help="torch.compile: networks (a bare --compile), the backbone and a momentum or teacher network beside "
        "it, each on its own; step, the method's whole training step as one graph (heads and loss too); "
        "both also compile the device path's view rendering",
    )
    parser.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile's mode for the method (reduce-overhead: CUDA graphs); default: torch's default",
    )


def benchmark_backbone(name: str, image_size: int) -> Backbone:
    """``--backbone``: one of :func:`build_backbone`'s, or lightly's own CIFAR-10 ResNet-18 (needs lightly)."""
    if name == LIGHTLY_CIFAR10_BACKBONE:
        module = lightly_cifar10_backbone(import_lightly())
        return Backbone(module=module, feature_dim=infer_feature_dim(module, image_size), name=name)
    return build_backbone(name, image_size)


def random_init_evaluation(spec: DatasetSpec, data: EvaluationData, args: argparse.Namespace) -> Evaluation:
    """The untrained backbone, seeded like every method's starting point."""
    seed_everything(args.seed)
    return evaluate(benchmark_backbone(spec.backbone, spec.image_size).module, data, args)


def recipe(name: str, spec: DatasetSpec, simclr_forward: str = "joint") -> object:
    """The method's default recipe; DINO's crops as lightly's benchmark of ``spec`` sets them, and SimCLR's
    forward as ``--simclr-forward`` asks.

    That is the dataset's blur (none at 32 px) and its number of local crops: none on
    CIFAR-10, where the product's default of 6 trained at 8,050 images/s on an H200
    (BYOL, also 2 views and a momentum teacher: 12,367) and is not the recipe of the
    number it is compared with.
    """
    default = method_class(name).recipe()
    if isinstance(default, DINOConfig):
        blur = (spec.blur_prob, spec.blur_prob / 5, spec.blur_prob)
        crops = MultiCropConfig(blur_probs=blur, num_local_crops=spec.dino_local_crops)
        return replace(default, multicrop=crops)
    if isinstance(default, SimCLRConfig):
        return replace(default, forward_per_view=simclr_forward == "per-view")
    return default


def run_method(
    name: str,
    spec: DatasetSpec,
    root: Path,
    args: argparse.Namespace,
    teacher_path: Path | None,
    data: EvaluationData,
    random_init: Evaluation,
) -> MethodResult:
    config = train_config(args, name)
    fingerprint = f"{name}-{args.dataset}-{args.epochs}-{args.batch_size}-{config.lr}-{config.optimizer}-{args.seed}"
    if teacher_path is not None:  # a teacher retrained, or another method become the best: distil afresh
        fingerprint += f"-teacher-{sha256_file(teacher_path)}"
    if spec.backbone != DATASETS[args.dataset].backbone:  # --backbone, or a model of distillation_benchmark.py
        fingerprint += f"-{spec.backbone}"
    method_recipe = recipe(name, spec, args.simclr_forward)
    if isinstance(method_recipe, SimCLRConfig) and method_recipe.forward_per_view:
        fingerprint += "-per-view"
    method_dir = args.work_dir / "runs" / name
    # From here to the saved model, over every call that trains this method: the wall time of a claim
    # such as "200 epochs in 5 minutes", compilation, evaluations and checkpoints included.
    clock = CallClock(method_dir / "wall_seconds.json", fingerprint, resume=args.resume)
    norm = Normalization()
    seed_everything(args.seed)
    backbone = benchmark_backbone(spec.backbone, spec.image_size)
    train_set = ManifestDataset(root, [spec.train_split])
    teacher = load_teacher_file(teacher_path) if teacher_path is not None else None
    method = build_method(name, backbone, method_recipe, teacher=teacher, num_images=len(train_set))
    view = method.view_config(spec.image_size, blur_prob=spec.blur_prob)
    if data.on_device is not None:
        train_set = data.on_device.train
        train_set.views = method.batch_transform(view, norm)
    else:
        train_set.transform = method.train_transform(view, norm)

    log_path = method_dir / "knn_per_epoch.json"
    # Resuming keeps the evaluations of the epochs trained before, label-free scores included.
    epoch_log = read_epoch_log(log_path) if log_path.exists() and args.resume else {}
    result = MethodResult(
        name,
        args.epochs,
        config.batch_size,
        config.lr,
        config.optimizer,
        random_init_knn_top1=random_init.knn_top1,
        random_init=asdict(random_init),
    )

    def evaluate_epoch(stats: EpochStats) -> None:
        started = time.perf_counter()
        evaluation = evaluate(method.backbone, data, args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_log[str(stats.epoch)] = {**asdict(evaluation), "eval_seconds": time.perf_counter() - started}
        log_path.write_text(json.dumps(epoch_log, indent=2))
        print(
            f"  {name} epoch {stats.epoch}: loss {stats.loss:.4f} kNN top-1 {evaluation.knn_top1:.4f} "
            f"RankMe {evaluation.rankme:.1f} alignment {evaluation.alignment:.3f} "
            f"uniformity {evaluation.uniformity:.3f}",
            flush=True,
        )
        clock.record()

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_host_memory()
    method_dir.mkdir(parents=True, exist_ok=True)
    history = train(
        method,
        train_set,
        config,
        method_dir / "checkpoints",
        resume=args.resume,
        fingerprint=fingerprint,
        on_epoch_end=evaluate_epoch,
    )
    # Training time only, from the epochs' own clocks: they stop before the per-epoch
    # evaluation, and the checkpoint keeps them, so a resumed run reports every epoch's time.
    result.train_seconds = sum(epoch.seconds for epoch in history.epochs)
    result.images_per_second = len(train_set) * len(history.epochs) / max(result.train_seconds, 1e-9)
    eval_times = [entry["eval_seconds"] for entry in epoch_log.values() if "eval_seconds" in entry]
    result.mean_eval_seconds = sum(eval_times) / len(eval_times) if eval_times else None
    if history.resumed_from_epoch < args.epochs:  # a call that trained nothing measured no training memory
        if device.type == "cuda":
            result.peak_gpu_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
        result.peak_host_memory_gb = peak_host_memory_gb()
    if str(args.epochs) not in epoch_log:
        # Interrupted between the last checkpoint and its evaluation: the resumed run trained nothing more.
        epoch_log[str(args.epochs)] = asdict(evaluate(method.backbone, data, args))
        log_path.write_text(json.dumps(epoch_log, indent=2))
    evaluated = [e for e in range(1, args.epochs + 1) if str(e) in epoch_log]
    result.knn_per_epoch = [epoch_log[str(e)]["knn_top1"] for e in evaluated]
    # Each epoch's own clocks, so a compiled run's steady state shows apart from its first (compiling) epoch.
    train_seconds_of = {epoch.epoch: epoch.seconds for epoch in history.epochs}
    result.per_epoch = [
        {**{"epoch": e, "train_seconds": train_seconds_of.get(e)}, **epoch_log[str(e)]}
        for e in evaluated
        if "rankme" in epoch_log[str(e)]
    ]
    result.final_knn_top1 = result.knn_per_epoch[-1]
    result.best_knn_top1 = max(result.knn_per_epoch)
    result.best_epoch = evaluated[result.knn_per_epoch.index(result.best_knn_top1)]
    result.collapsed = bool(history.epochs and history.epochs[-1].collapsed)
    info = EmbeddingModelInfo(spec.backbone, backbone.feature_dim, spec.image_size, norm, name)
    save_embedding_model(trained_model_path(args, name), method.backbone.cpu(), info)
    if history.resumed_from_epoch < args.epochs:
        clock.record()  # this call trained: its time runs to the saved model
    result.wall_seconds = clock.total_seconds()
    result.calls = len(clock.calls())
    return result


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
    parser.add_argument(
        "--optimizer",
        choices=("auto", *OPTIMIZERS),
        default="auto",
        help="auto: the method's own (SGD as in the lightly recipe; LARS for Barlow Twins and VICReg)",
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help=f"default: the dataset's (cifar10: resnet18_cifar); {LIGHTLY_CIFAR10_BACKBONE}: the ResNet-18 of "
        "lightly's CIFAR-10 benchmark, built by the lightly package (no ReLU after the stem, PyTorch's default init)",
    )
    parser.add_argument(
        "--simclr-forward",
        choices=("joint", "per-view"),
        default="joint",
        help="SimCLR's forward: joint, both views at once (the product's default); per-view, each view on its own, "
        "so BatchNorm normalizes each with its own batch statistics (lightly's CIFAR-10 benchmark)",
    )
    parser.add_argument("--train-per-class", type=int, default=None, help="class-balanced subset (default: all)")
    parser.add_argument("--test-per-class", type=int, default=None, help="class-balanced subset (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16-mixed", choices=PRECISIONS)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument(
        "--loader",
        choices=("pil", "device"),
        default="pil",
        help="pil: DataLoader with per-image PIL views; device: decoded once, views rendered on the device",
    )
    add_compile_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--label-free-pairs",
        type=int,
        default=1024,
        help="train images (a seeded sample) whose two views give alignment and uniformity",
    )
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
    if args.backbone is not None:
        spec = replace(spec, backbone=args.backbone)
    check_backbone(spec.backbone, methods, parser)
    if args.simclr_forward != "joint" and "simclr" not in methods:
        parser.error(f"--simclr-forward {args.simclr_forward} needs simclr among --methods ({','.join(methods)})")
    set_up = time.perf_counter()
    root = prepare(spec, args.datasets, args.work_dir, args.train_per_class, args.test_per_class)
    device = resolve_device(args.device)
    setup = {
        "dataset": args.dataset,
        "device": device_description(device),
        "backbone": spec.backbone,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "precision": args.precision,
        "loader": args.loader,
        "simclr_forward": args.simclr_forward,
        "train_images": len(ManifestDataset(root, [spec.train_split])),
        "test_images": len(ManifestDataset(root, [spec.test_split])),
        "label_free_pairs": min(args.label_free_pairs, len(ManifestDataset(root, [spec.train_split]))),
        "torch": torch.__version__,
    }
    # Methods may run in separate invocations (one per GPU call): results of the same
    # setup in --out are kept, and a method run again replaces its old result.
    previous_header, finished = previous_results(args.out, setup, parser)
    command = "python benchmarks/lightly_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commands = previous_header.get("commands", []) + [command]
    failed: dict[str, str] = dict(previous_header.get("failed", {}))
    data = evaluation_data(spec, root, args)
    random_init = random_init_evaluation(spec, data, args)
    setup_seconds = time.perf_counter() - set_up
    print(
        f"random init: kNN top-1 {random_init.knn_top1:.4f} RankMe {random_init.rankme:.1f} "
        f"alignment {random_init.alignment:.3f} uniformity {random_init.uniformity:.3f}",
        flush=True,
    )
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
        try:
            finished[name] = run_method(name, spec, root, args, teacher, data, random_init)
            failed.pop(name, None)
        except FloatingPointError as error:  # a diverged method is a result too; the others still run
            finished.pop(name, None)
            failed[name] = f"{error} (lr {train_config(args, name).lr:g})"
            print(f"{name} failed: {failed[name]}", flush=True)
        # Written after every method, so a crash later loses none of the finished ones.
        header = {**previous_header, **setup, "commands": commands, "failed": failed, "setup_seconds": setup_seconds}
        write_results(args.out, header, [finished[m] for m in ALL_METHODS if m in finished])
    print((args.out / "results.md").read_text())


def check_backbone(name: str, methods: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    """Fails (via ``parser.error``) before any work on a backbone the run cannot build or a teacher could not load."""
    if name == LIGHTLY_CIFAR10_BACKBONE:
        try:
            import_lightly()
        except ImportError as error:
            parser.error(str(error))
        distilled = [m for m in methods if method_class(m).needs_teacher]
        if distilled:
            parser.error(
                f"--backbone {name} cannot train {', '.join(distilled)}: a teacher is loaded from the project's "
                "model file, which rebuilds only the project's own backbones"
            )
    elif name not in available_backbones():
        parser.error(
            f"--backbone {name!r} is unknown: choose {LIGHTLY_CIFAR10_BACKBONE} or one of "
            f"{', '.join(available_backbones())}"
        )


if __name__ == "__main__":
    main()
