"""Our training step against the ``lightly`` package's, side by side in one run: SimCLR and BYOL.

    # lightly is no runtime dependency (only in the dev extras); without its own dependencies:
    pip install --no-deps lightly            # or: pip install --no-deps --target /tmp/lightly-site lightly
    # A few hundred steps on a CPU (results/cpu-lightly-side-by-side/results.md has the command it ran):
    PYTHONPATH=/tmp/lightly-site python benchmarks/lightly_side_by_side.py \
        --out benchmarks/results/cpu-lightly-side-by-side

Both sides train the same network, ``resnet18_cifar`` of :mod:`ssl_core.backbones` from
the same seeded initialization, on the same class-balanced CIFAR-10 subset with the
lightly CIFAR-10 recipe (:func:`benchmarks.lightly_benchmark.train_config`: SGD momentum
0.9, weight decay 5e-4, lr 0.06 x batch/128 decayed per step on a cosine), and share
batch size, epochs, precision, memory layout, seed and DataLoader workers
(``DataLoader(shuffle=True, drop_last=True)``). Everything else in a step differs:

- ours: ``ssl_core`` as the pipeline trains, the method of
  :func:`ssl_core.methods.factory.build_method`, its views
  (``method.train_transform``) and :func:`ssl_core.engine.train`;
- lightly: a plain PyTorch loop (:func:`train_lightly`, no Lightning) around lightly's own
  heads, losses and transforms, set up as lightly's CIFAR-10 benchmark
  (``docs/source/getting_started/benchmarks/cifar10_benchmark.py`` in the lightly
  repository) sets them up: SimCLR with ``SimCLRProjectionHead``, ``NTXentLoss`` and
  ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``; BYOL with
  ``BYOLProjectionHead``, ``BYOLPredictionHead``, ``NegativeCosineSimilarity``, a target
  moved by ``update_momentum`` with a ``cosine_schedule`` momentum, and ``BYOLTransform``
  of ``BYOLView1Transform``/``BYOLView2Transform`` at 32 px without blur. The heads take
  our recipe's sizes (:mod:`ssl_core.methods.recipes`), so both sides do the same
  arithmetic; lightly's benchmark gives BYOL's heads a hidden width of 1024, not 4096.

The four trainings run alternately (ours-simclr, lightly-simclr, ours-byol, lightly-byol).
Training time is the sum of the epochs' clocks (each from the DataLoader's start to
its last step, as the engine times them: no evaluation, no checkpoint writing).
Each trained backbone is then scored by kNN (k=200, t=0.1) on the test subset, with
the train subset under the eval transform as the bank. Last, where a step's time
goes: rendering one batch of views in the main process (what the DataLoader worker
does per batch), and one model step on fixed views with no data loading (the side's
own loop, 2 epochs of ``--profile-steps`` steps, the second timed).

Writes ``results.json`` and ``results.md`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FunctionType, ModuleType

import torch
import torchvision
from torch import nn
from torch.utils.data import Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.benchmark_data import DATASETS, DatasetSpec, prepare  # noqa: E402
from benchmarks.lightly_benchmark import train_config  # noqa: E402
from benchmarks.lightly_reference import (  # noqa: E402
    LIGHTLY_MODELS,
    METHODS,
    EpochTime,
    import_lightly,
    train_lightly,
)
from benchmarks.machine import cpu_description  # noqa: E402
from ssl_core.augment import Normalization, eval_transform  # noqa: E402
from ssl_core.backbones import build_backbone  # noqa: E402
from ssl_core.data import ManifestDataset  # noqa: E402
from ssl_core.embed import compute_embeddings  # noqa: E402
from ssl_core.engine import TrainConfig, train  # noqa: E402
from ssl_core.knn import knn_evaluate  # noqa: E402
from ssl_core.methods.factory import build_method, method_class  # noqa: E402
from ssl_core.precision import resolve_device, seed_everything  # noqa: E402

THIS_MODULE = "benchmarks.lightly_side_by_side"
SIDES = ("ours", "lightly")


def qualified_name(obj: object) -> str:
    """``module.name`` of ``obj`` (a function) or of its type: what the results record as each side's components."""
    named = obj if isinstance(obj, FunctionType) else type(obj)
    # Run as a script, this file is __main__: name it as the package does.
    module = THIS_MODULE if named.__module__ == "__main__" else named.__module__
    return f"{module}.{named.__qualname__}"


class StepClock:
    """When each optimizer step ended, by epoch: the steady pace, apart from each epoch's DataLoader start."""

    def __init__(self) -> None:
        self.ends: dict[int, list[float]] = {}

    def __call__(self, epoch: int) -> None:
        self.ends.setdefault(epoch, []).append(time.perf_counter())

    def median_interval(self) -> float | None:
        """Median seconds between consecutive step ends within an epoch; None with one step per epoch."""
        intervals = [b - a for ends in self.ends.values() for a, b in itertools.pairwise(ends)]
        return statistics.median(intervals) if intervals else None


@dataclass
class Contender:
    """One side's model for one method: its network, its training views and its loop.

    Attributes:
        model: holds ``backbone``, the network that is timed and then scored by kNN.
        train_set: the training images under the side's own random views.
        fit: trains ``model`` on a dataset with a config, calling a clock with the epoch after
            every optimizer step; returns each epoch's time and loss.
        components: what the side is made of, by qualified name (the results say so).
    """

    model: nn.Module
    train_set: Dataset
    fit: Callable[[Dataset, TrainConfig, Callable[[int], None]], list[EpochTime]]
    components: dict[str, str]


def ours(name: str, spec: DatasetSpec, root: Path, work_dir: Path, lightly: ModuleType) -> Contender:
    """The method as the pipeline builds and trains it; a seeded backbone built first, as lightly's side."""
    backbone = build_backbone(spec.backbone, spec.image_size)
    method = build_method(name, backbone)
    view = method.view_config(spec.image_size, blur_prob=spec.blur_prob)
    transform = method.train_transform(view, Normalization())
    train_set = ManifestDataset(root, [spec.train_split], transform)

    def fit(dataset: Dataset, config: TrainConfig, on_step: Callable[[int], None]) -> list[EpochTime]:
        # Checkpoints are written between epochs, outside the clocks; resume=False never reads them.
        history = train(method, dataset, config, work_dir / "ours" / name, on_step=lambda info: on_step(info.epoch))
        return [EpochTime(e.seconds, e.loss) for e in history.epochs]

    components = {
        "model": qualified_name(method),
        "loss": qualified_name(method.criterion),
        "transform": qualified_name(transform),
        "view": qualified_name(transform.transforms[0]),
        "loop": qualified_name(train),
    }
    return Contender(method, train_set, fit, components)


def lightly_side(name: str, spec: DatasetSpec, root: Path, work_dir: Path, lightly: ModuleType) -> Contender:
    """lightly's heads, loss and views for ``name`` around the same seeded backbone, in :func:`train_lightly`."""
    backbone = build_backbone(spec.backbone, spec.image_size)
    model_class = LIGHTLY_MODELS[name]
    model = model_class(lightly, backbone.module, backbone.feature_dim, method_class(name).recipe())
    transform = model_class.transform(lightly, spec.image_size)
    train_set = ManifestDataset(root, [spec.train_split], transform)
    components = {
        "model": qualified_name(model),
        "loss": qualified_name(model.criterion),
        "head": qualified_name(model.projection_head),
        "transform": qualified_name(transform),
        "view": qualified_name(transform.transforms[0]),
        "loop": qualified_name(train_lightly),
    }
    fit = lambda dataset, config, on_step: train_lightly(model, dataset, config, on_step)  # noqa: E731
    return Contender(model, train_set, fit, components)


BUILDERS = {"ours": ours, "lightly": lightly_side}


@dataclass
class SideResult:
    """One side's training of one method: time, throughput, kNN and where a step's time goes."""

    side: str
    method: str
    components: dict[str, str]
    init_checksum: float  # sum of the initial backbone's weights: equal on both sides
    steps: int
    train_seconds: float
    seconds_per_step: float
    median_step_seconds: float | None  # between step ends within an epoch: no DataLoader start
    images_per_second: float
    epoch_seconds: list[float]
    epoch_losses: list[float]
    knn_top1: float = 0.0
    eval_seconds: float = 0.0
    # Rendering one batch of views in the main process (decode included), and one step on fixed views.
    augment_seconds_per_batch: float | None = None
    model_step_seconds: float | None = None


@dataclass(frozen=True)
class EvaluationData:
    bank: ManifestDataset  # train subset, eval transform
    queries: ManifestDataset  # test subset, eval transform


def evaluate(backbone: nn.Module, data: EvaluationData, config: TrainConfig) -> float:
    """kNN top-1 (k=200, t=0.1, the lightly benchmarks' protocol) of ``backbone``'s embeddings."""
    device = resolve_device(config.device)
    backbone.to(device)
    embed = lambda dataset: compute_embeddings(  # noqa: E731
        backbone, dataset, 512, config.num_workers, device, config.precision
    )
    bank_x, bank_y = embed(data.bank)
    query_x, query_y = embed(data.queries)
    return knn_evaluate(bank_x, bank_y, query_x, query_y, len(data.bank.class_names), k=200, temperature=0.1).top1


class FixedViews(Dataset):
    """``views`` of ``batch_size`` images, repeated: a model step with no data loading to wait for."""

    def __init__(self, views: list[list[torch.Tensor]], steps: int) -> None:
        self.views = views
        self.length = len(views) * steps

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        return self.views[index % len(self.views)], 0


def profile(contender: Contender, config: TrainConfig, steps: int) -> tuple[float, float]:
    """Seconds to render one batch of views in this process, and seconds per model step on fixed views.

    Runs the side's own loop for 2 epochs of ``steps`` steps and times the second: the
    first pays the one-off costs (oneDNN kernel selection). It trains the model on: call it last.
    """
    started = time.perf_counter()
    views = [contender.train_set[i][0] for i in range(config.batch_size)]
    augment = time.perf_counter() - started
    fixed = replace(config, epochs=2, num_workers=0)
    epochs = contender.fit(FixedViews(views, steps), fixed, lambda epoch: None)
    return augment, epochs[-1].seconds / steps


def run_side(
    side: str,
    name: str,
    spec: DatasetSpec,
    root: Path,
    args: argparse.Namespace,
    lightly: ModuleType,
    data: EvaluationData,
) -> SideResult:
    """Builds one side from the seeded init, trains it (timed), scores it by kNN, then profiles its step."""
    seed_everything(args.seed)
    contender = BUILDERS[side](name, spec, root, args.work_dir, lightly)
    checksum = float(sum(p.detach().double().sum() for p in contender.model.backbone.parameters()))
    config = train_config(args, name)
    print(f"== {side} {name}: {contender.components['loss']}, {contender.components['transform']}", flush=True)
    clock = StepClock()
    epochs = contender.fit(contender.train_set, config, clock)
    steps = len(contender.train_set) // config.batch_size * config.epochs
    seconds = sum(e.seconds for e in epochs)
    result = SideResult(
        side,
        name,
        contender.components,
        checksum,
        steps,
        seconds,
        seconds / steps,
        clock.median_interval(),
        steps * config.batch_size / seconds,
        [e.seconds for e in epochs],
        [e.loss for e in epochs],
    )
    started = time.perf_counter()
    result.knn_top1 = evaluate(contender.model.backbone, data, config)
    result.eval_seconds = time.perf_counter() - started
    if args.profile_steps > 0:
        result.augment_seconds_per_batch, result.model_step_seconds = profile(contender, config, args.profile_steps)
    print(
        f"   {seconds:.1f} s for {steps} steps ({result.images_per_second:.1f} images/s), "
        f"kNN top-1 {result.knn_top1:.4f}",
        flush=True,
    )
    return result


# Facts of the two recipes as written, stated next to every result.
NOTES = (
    "Views: SimCLR's match (crop scale 0.08-1, flip, jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2, no blur); "
    "lightly's BYOL views are BYOL's asymmetric pair (jitter 0.4/0.4/0.2/0.1, solarization p 0.2 on the second "
    "view), ours BYOL trains on SimCLR's views. lightly's transforms run on torchvision.transforms.v2 when present.",
    "SimCLR: lightly's benchmark runs the backbone once per view (BatchNorm statistics per view), ours once on "
    "both views concatenated.",
    "BYOL: lightly's loss is -cos, ours 2 - 2 cos (the same gradient up to a factor 2, so the loss columns differ "
    "in scale); lightly moves the target at the start of a step, ours after the optimizer step.",
    "Recipe choices made equal here, not as lightly's benchmark has them: heads of our recipe's sizes (lightly's "
    "BYOL benchmark: hidden 1024), lr decayed per step (lightly: CosineAnnealingLR per epoch), BYOL momentum "
    "0.99 rising to 1 on a cosine (lightly's CIFAR-10 benchmark: a constant 0.99), bf16 autocast and "
    "channels_last on both sides (lightly's table: fp32).",
)


def markdown(report: dict) -> str:
    setup, methods = report["setup"], report["methods"]
    lines = [
        f"# Our training step against lightly's, side by side ({setup['machine']})",
        "",
        f"`{setup['command']}`",
        "",
        f"torch {setup['torch']}, torchvision {setup['torchvision']}, lightly {setup['lightly']}; "
        f"{setup['train_images']} train / {setup['test_images']} test CIFAR-10 images, {setup['backbone']}, "
        f"batch {setup['batch_size']}, {setup['epochs']} epochs = {setup['steps_per_side']} steps per side, "
        f"{setup['precision']}, {setup['num_workers']} DataLoader worker(s), {setup['threads']} torch threads, "
        f"seed {setup['seed']}. Run took {setup['run_minutes']:.1f} min.",
        "",
        "| method | ours train | lightly train | lightly / ours | ours kNN | lightly kNN | random init kNN |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pair in methods.items():
        ours_side, theirs = pair["ours"], pair["lightly"]
        lines.append(
            f"| {name} | {ours_side['train_seconds']:.0f} s ({ours_side['seconds_per_step']:.2f} s/step) "
            f"| {theirs['train_seconds']:.0f} s ({theirs['seconds_per_step']:.2f} s/step) "
            f"| {pair['time_ratio_lightly_over_ours']:.2f} | {ours_side['knn_top1']:.4f} | {theirs['knn_top1']:.4f} "
            f"| {report['random_init_knn_top1']:.4f} |"
        )
    lines += [
        "",
        "Where a step's time goes: rendering one batch of views in one process (JPEG decode included; "
        "the DataLoader worker's job), and one model step on fixed views (no data loading).",
        "",
        "| method | side | augment one batch | model step | train, per step (median) | loss per epoch |",
        "|---|---|---|---|---|---|",
    ]
    for name, pair in methods.items():
        for side in SIDES:
            r = pair[side]
            augment = f"{r['augment_seconds_per_batch']:.2f} s" if r["augment_seconds_per_batch"] is not None else "n/a"
            step = f"{r['model_step_seconds']:.2f} s" if r["model_step_seconds"] is not None else "n/a"
            losses = ", ".join(f"{loss:.3f}" for loss in r["epoch_losses"])
            median = f" ({r['median_step_seconds']:.2f} s)" if r["median_step_seconds"] is not None else ""
            lines.append(f"| {name} | {side} | {augment} | {step} | {r['seconds_per_step']:.2f} s{median} | {losses} |")
    lines += ["", "What differs besides the code (the recipe is shared):", "", *[f"- {note}" for note in NOTES]]
    lines += ["", "Components:", ""]
    for name, pair in methods.items():
        for side in SIDES:
            parts = ", ".join(f"{k} `{v}`" for k, v in pair[side]["components"].items())
            lines.append(f"- {name}, {side}: {parts}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)  # the lightly CIFAR-10 table's smaller batch
    parser.add_argument("--lr", type=float, default=None, help="peak lr of both sides (default: the lightly recipe)")
    parser.add_argument("--train-per-class", type=int, default=256, help="class-balanced subset")
    parser.add_argument("--test-per-class", type=int, default=100, help="class-balanced subset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16-mixed", choices=("fp32", "bf16-mixed"))
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers of both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-steps", type=int, default=3, help="model steps timed per side; 0 skips")
    parser.add_argument("--datasets", type=Path, default=REPO_ROOT.parent / "shared" / "datasets")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/lightly-side-by-side"))
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    # train_config reads these: compiling would time the compiler, and lightly's side trains with SGD.
    parser.set_defaults(compile="off", compile_mode=None, optimizer="sgd")
    args = parser.parse_args(argv)
    args.methods = tuple(args.methods.split(","))
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    return args, parser


def main(argv: list[str] | None = None) -> dict:
    """Runs the comparison; returns the report it writes to ``--out/results.json``."""
    run_started = time.perf_counter()
    args, parser = parse_args(argv)
    try:
        lightly = import_lightly()
    except ImportError as error:
        parser.error(str(error))
    spec = DATASETS["cifar10"]
    root = prepare(spec, args.datasets, args.work_dir, args.train_per_class, args.test_per_class)
    evaluation = eval_transform(spec.image_size, Normalization())
    data = EvaluationData(
        ManifestDataset(root, [spec.train_split], evaluation), ManifestDataset(root, [spec.test_split], evaluation)
    )
    config = train_config(args, METHODS[0])
    seed_everything(args.seed)
    random_init = evaluate(build_backbone(spec.backbone, spec.image_size).module, data, config)
    print(f"random init: kNN top-1 {random_init:.4f}", flush=True)
    methods: dict[str, dict] = {}
    for name in args.methods:
        pair = {side: asdict(run_side(side, name, spec, root, args, lightly, data)) for side in SIDES}
        pair["time_ratio_lightly_over_ours"] = pair["lightly"]["train_seconds"] / pair["ours"]["train_seconds"]
        methods[name] = pair
    steps = len(data.bank) // args.batch_size * args.epochs
    report = {
        "setup": {
            "command": "python benchmarks/lightly_side_by_side.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": cpu_description() if resolve_device(args.device).type == "cpu" else torch.cuda.get_device_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightly": lightly.__version__,
            "lightly_path": str(Path(lightly.__file__).parent),
            "backbone": spec.backbone,
            "train_images": len(data.bank),
            "test_images": len(data.queries),
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "steps_per_side": steps,
            "lr": {name: train_config(args, name).lr for name in args.methods},
            "precision": args.precision,
            "channels_last": config.channels_last,
            "num_workers": args.num_workers,
            "seed": args.seed,
            "profile_steps": args.profile_steps,
            "run_minutes": (time.perf_counter() - run_started) / 60,
        },
        "random_init_knn_top1": random_init,
        "methods": methods,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
