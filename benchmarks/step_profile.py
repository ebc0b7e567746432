"""Where a training step's time goes on the device path: augmentation against the model step.

    python benchmarks/step_profile.py --out benchmarks/results/gpu-h200-step-profile

On random uint8 images already on the device (50,000 of CIFAR-10's size), times
with CUDA synchronization (or wall clock on a CPU), after 5 warm-up calls:

- rendering SimCLR's two views of a batch (:class:`ssl_core.batch_augment.BatchViews`);
- one SimCLR optimizer step (bf16 autocast, channels_last, fused SGD on a GPU) on those views,
  without and with cuDNN's autotuning of convolution algorithms (the engine's setting on CUDA),
  and with LARS (:mod:`ssl_core.optimizers`, Barlow Twins' and VICReg's) in place of SGD;
- the same step with the backbone compiled (``torch.compile``), at the batch size and at twice it,
  and compiled with CUDA graphs (``mode="reduce-overhead"``: one replay per forward and backward
  instead of a launch per kernel; on a CPU the mode falls back to plain compilation);
- the two views rendered through :meth:`~ssl_core.batch_augment.BatchViews.compile`;
- one BYOL step (its momentum target's forward and EMA update included), with cuDNN autotuning;
  and, to split it, the target's two forwards alone and a SimCLR step that, like BYOL's online
  network, forwards each view on its own (``SimCLRConfig.forward_per_view``);
- BYOL's EMA target update (ResNet-18 and projection head) one tensor at a time against
  :func:`ssl_core.momentum.ema_update`'s multi-tensor kernels;
- two costs outside the steps: the engine's checkpoint of SimCLR (model and optimizer state,
  written to a temporary file and renamed; after an epoch, at most one per
  ``TrainConfig.checkpoint_interval_s``), and RankMe of a 50,000 x 512
  kNN bank (:func:`ssl_core.label_free.rankme`), which the benchmark evaluates after every epoch.

Writes ``results.json`` and ``results.md`` to ``--out``, again after each figure, so a run cut short keeps
the figures it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ssl_core.augment import Normalization, ViewConfig
from ssl_core.backbones import build_backbone
from ssl_core.batch_augment import BatchViews, draw_view
from ssl_core.engine import TrainConfig, TrainHistory, save_checkpoint
from ssl_core.label_free import rankme
from ssl_core.methods.base import SSLMethod
from ssl_core.methods.factory import build_method
from ssl_core.methods.recipes import SimCLRConfig
from ssl_core.momentum import ema_update
from ssl_core.optimizers import build_optimizer
from ssl_core.precision import autocast, cudnn_autotuning, resolve_device


def seconds_per_call(fn: Callable[[], object], device: torch.device, calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / calls


def ema_seconds(byol: torch.nn.Module, device: torch.device, calls: int) -> tuple[float, float]:
    """Seconds per EMA update of BYOL's target backbone and head: one tensor at a time, then ``ema_update``."""
    byol.to(device)
    pairs = [(byol.backbone, byol.target_backbone), (byol.projection_head, byol.target_projection_head)]

    @torch.no_grad()
    def per_tensor() -> None:  # what ema_update did before it used multi-tensor kernels
        for online, target in pairs:
            for p_target, p_online in zip(target.parameters(), online.parameters(), strict=True):
                p_target.mul_(0.99).add_(p_online, alpha=0.01)

    def multi_tensor() -> None:
        for online, target in pairs:
            ema_update(online, target, 0.99)

    return seconds_per_call(per_tensor, device, calls), seconds_per_call(multi_tensor, device, calls)


def checkpoint_seconds(method: SSLMethod, optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    """Seconds per :func:`ssl_core.engine.save_checkpoint`, which the engine calls after an epoch, at most once
    per ``checkpoint_interval_s``."""
    config = TrainConfig(epochs=1, batch_size=1, lr=0.1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.pt"
        save = functools.partial(save_checkpoint, path, 1, method, optimizer, TrainHistory(), config, "profile")
        return seconds_per_call(save, device, calls=5, warmup=1)


def rows(batch_size: int, bank_size: int = 50_000) -> list[tuple[str, str, int | None]]:
    """(results key, what it times, images per call or None) for each line of the table, in order."""
    b = batch_size
    return [
        ("augment_ms", f"2 SimCLR views of {b} images", b),
        ("step_ms", f"SimCLR step, {b} images", b),
        ("step_cudnn_autotuning_ms", "the same, cuDNN autotuning (the engine's setting on CUDA)", b),
        ("step_lars_ms", "the same with LARS instead of SGD", b),
        ("byol_step_ms", f"BYOL step (with its target's forward and EMA), {b} images", b),
        ("draw_ms", "drawing the views' random parameters (eager)", None),
        ("ema_per_tensor_ms", "BYOL's EMA target update, one tensor at a time", None),
        ("ema_foreach_ms", "the same in multi-tensor kernels (ema_update)", None),
        ("checkpoint_ms", "SimCLR's checkpoint (model and optimizer state) to a local file", None),
        ("rankme_ms", f"RankMe of a {bank_size:,} x 512 kNN bank, once an epoch", None),
        ("byol_target_forward_ms", f"BYOL's target network alone: both views forward, no gradient, {b} images", b),
        ("simclr_per_view_step_ms", f"SimCLR step, each view through the network on its own, {b} images", b),
        ("compiled_augment_ms", "2 SimCLR views, rendering compiled", b),
        ("compiled_augment_cuda_graphs_ms", "2 SimCLR views, rendering compiled with CUDA graphs", b),
        ("compiled_step_ms", f"compiled step, {b} images", b),
        ("compiled_step_double_batch_ms", f"compiled step, {2 * b} images", 2 * b),
        ("compiled_step_cuda_graphs_ms", f"compiled step with CUDA graphs, {b} images", b),
    ]


class Profile:
    """The figures measured so far, rewritten to ``results.json`` and ``results.md`` after each one.

    A GPU call that times out (``gpu_session.sh`` gives the eager profile 40 s) keeps
    what it measured before the limit.
    """

    def __init__(self, out: Path, batch_size: int, device: torch.device, bank_size: int = 50_000) -> None:
        self.out, self.batch_size, self.bank_size = out, batch_size, bank_size
        self.results: dict = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "torch": torch.__version__,
            "batch_size": batch_size,
            "bank_size": bank_size,
        }
        out.mkdir(parents=True, exist_ok=True)

    def record(self, key: str, seconds: float | None, error: Exception | None = None) -> None:
        self.results[key] = None if seconds is None else seconds * 1e3
        if error is not None:
            self.results.setdefault("errors", {})[key] = repr(error)[:2000]
        if "augment_ms" in self.results and "step_ms" in self.results:
            augment, step = self.results["augment_ms"], self.results["step_ms"]
            self.results["augment_share"] = augment / (augment + step)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (self.out / "results.md").write_text(self.table())

    def table(self) -> str:
        lines = [
            f"# Step profile ({self.results['device']}, torch {self.results['torch']})",
            "",
            "| what | ms per call | images/s |",
            "|---|---|---|",
        ]
        for key, what, images in rows(self.batch_size, self.bank_size):
            if key not in self.results:
                continue
            ms = self.results[key]
            if ms is None:
                lines.append(f"| {what} | failed | |")
            else:
                lines.append(
                    f"| {what} | {ms:.2f} | {images / ms * 1e3:,.0f} |" if images else f"| {what} | {ms:.2f} | |"
                )
        if "augment_share" in self.results:
            lines += ["", f"Augmentation is {self.results['augment_share']:.0%} of an uncompiled step's time."]
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--bank-size", type=int, default=50_000, help="kNN bank rows for RankMe (CIFAR-10: 50,000)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    profile = Profile(args.out, args.batch_size, device, args.bank_size)
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    spec = ViewConfig().spec()  # SimCLR's view, twice
    views_of = BatchViews([spec] * 2, Normalization())
    batch = images[torch.randperm(len(images), device=device)[: args.batch_size]]
    profile.record("augment_ms", seconds_per_call(lambda: views_of(batch, generator), device, args.calls))

    def placed(name: str, recipe: object = None) -> SSLMethod:
        """``name`` around a fresh CIFAR ResNet-18, on the device in channels_last, as the engine places it."""
        built = build_method(name, build_backbone("resnet18_cifar", 32), recipe)
        built.to(device, memory_format=torch.channels_last)
        return built

    method = placed("simclr")
    # One recipe for every optimizer timed here; fused on a GPU, as the engine builds it.
    optimizer_of = functools.partial(
        build_optimizer, lr=0.1, momentum=0.9, weight_decay=5e-4, fused=device.type == "cuda" or None
    )
    sgd, lars = optimizer_of("sgd", method.parameters()), optimizer_of("lars", method.parameters())

    def step_on(
        views: list[torch.Tensor], optimizer: torch.optim.Optimizer = sgd, trained: torch.nn.Module = method
    ) -> Callable[[], None]:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]

        def step() -> None:
            with autocast(device, "bf16-mixed"):
                loss = trained.training_step(views).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trained.after_optimizer_step()  # BYOL's EMA; nothing for SimCLR

        return step

    profile.record("step_ms", seconds_per_call(step_on(views_of(batch, generator)), device, args.calls))
    with cudnn_autotuning(device):  # as the engine trains on CUDA
        tuned_step = seconds_per_call(step_on(views_of(batch, generator)), device, args.calls)
        profile.record("step_cudnn_autotuning_ms", tuned_step)
        lars_step = seconds_per_call(step_on(views_of(batch, generator), lars), device, args.calls)
        profile.record("step_lars_ms", lars_step)
        # BYOL: the same two views, plus a forward of the momentum target and its EMA update per step.
        byol = placed("byol")
        byol_sgd = optimizer_of("sgd", byol.trainable_parameters())
        byol_step = seconds_per_call(step_on(views_of(batch, generator), byol_sgd, byol), device, args.calls)
        profile.record("byol_step_ms", byol_step)
    draw = seconds_per_call(lambda: draw_view(2 * args.batch_size, 32, 32, spec, generator), device, args.calls)
    profile.record("draw_ms", draw)
    per_tensor, multi_tensor = ema_seconds(byol, device, args.calls)
    profile.record("ema_per_tensor_ms", per_tensor)
    profile.record("ema_foreach_ms", multi_tensor)
    profile.record("checkpoint_ms", checkpoint_seconds(method, sgd, device))
    bank = torch.nn.functional.normalize(torch.randn(args.bank_size, 512, device=device), dim=1)
    profile.record("rankme_ms", seconds_per_call(lambda: rankme(bank), device, calls=3, warmup=1))
    # Where BYOL's step goes beyond SimCLR's: its target's forwards, and one forward per view (BYOL's online
    # network runs each view alone, SimCLR's default both at once).
    with cudnn_autotuning(device):
        x0, x1 = (v.contiguous(memory_format=torch.channels_last) for v in views_of(batch, generator))

        def target_forwards() -> None:
            with autocast(device, "bf16-mixed"):
                byol.embed_target(x0), byol.embed_target(x1)

        profile.record("byol_target_forward_ms", seconds_per_call(target_forwards, device, args.calls))
        per_view = placed("simclr", SimCLRConfig(forward_per_view=True))
        per_view_sgd = optimizer_of("sgd", per_view.parameters())
        per_view_step = step_on(views_of(batch, generator), per_view_sgd, per_view)
        profile.record("simclr_per_view_step_ms", seconds_per_call(per_view_step, device, args.calls))
    if args.compile:
        # Each compiled measurement on its own: one that fails on this machine records its error, not the others'.
        def compiled_augment(mode: str | None) -> Callable[[], float]:
            def measure() -> float:
                compiled_views = BatchViews([spec] * 2, Normalization())
                compiled_views.compile(mode)
                return seconds_per_call(lambda: compiled_views(batch, generator), device, args.calls)

            return measure

        def compiled_step(size: int) -> Callable[[], float]:
            def measure() -> float:
                method.backbone.compile()
                chosen = images[torch.randperm(len(images), device=device)[:size]]
                return seconds_per_call(
                    step_on(views_of(chosen, generator)), device, max(args.calls * args.batch_size // size, 1)
                )

            return measure

        def compiled_step_cuda_graphs() -> float:
            graphed = placed("simclr")
            graphed.backbone.compile(mode="reduce-overhead")
            graphed_sgd = optimizer_of("sgd", graphed.parameters())
            step = step_on(views_of(batch, generator), graphed_sgd, graphed)
            return seconds_per_call(step, device, args.calls)

        for name, measure in (
            ("compiled_augment_ms", compiled_augment(None)),
            ("compiled_augment_cuda_graphs_ms", compiled_augment("reduce-overhead")),
            ("compiled_step_ms", compiled_step(args.batch_size)),
            ("compiled_step_double_batch_ms", compiled_step(2 * args.batch_size)),
            ("compiled_step_cuda_graphs_ms", compiled_step_cuda_graphs),
        ):
            try:
                profile.record(name, measure())
            except Exception as error:  # noqa: BLE001 - recorded, and the profile goes on
                profile.record(name, None, error)
                print(f"{name} failed: {error!r}", flush=True)
    print(profile.table(), end="")


if __name__ == "__main__":
    main()
