"""Where each method's training step spends the device's time: phase by phase and operator by operator.

    python benchmarks/kernel_profile.py --out benchmarks/results/gpu-h200-<commit>-kernel-profile

Trains each method through the engine itself (:func:`ssl_core.engine.train` on
:class:`~ssl_core.device_data.DeviceImages`: bf16 autocast, channels_last, fused optimizer, cuDNN
autotuning; eager, or compiled as ``--compile [networks|step]`` asks) for one short epoch on random uint8
images of CIFAR-10's size, with the table's recipe (``lightly_benchmark.train_config``: batch 512, each
method's optimizer and learning rate). After ``--warmup`` steps (cuDNN's tuning, the caching allocator, and
compiling in the first) it times ``--timed`` steps between two
synchronizations with the profiler off, then records ``--steps`` more with ``torch.profiler``
(after one step of the profiler's own warm-up, and no synchronization before the recorded steps, so they
start with the host ahead of the device as in training). Per method, in ``results.json`` and ``results.md``:

- ``step_ms``: a step with the profiler off; ``profiled_step_ms``: with it on, over its warm-up step and the
  recorded ones (the profiler's own cost);
- ``device_busy_ms``: per step, the union of the intervals in which the device ran a kernel or a copy,
  and ``device_idle_share``: the rest of the profiled window, where the device waited for the host (a
  launch-bound step shows here, not in the busy time);
- ``host_ops_per_step``: the operators the host dispatches per step (the innermost ones), and on a GPU
  ``device_ops_per_step``: the kernels, copies and sets it runs; each costs the host microseconds
  however small it is, so thousands per step can keep a fast device waiting; ``host_ops_by_phase``
  splits the first by phase;
- ``phase_ms``: device time per step of each part of the step (``ssl_core.engine.STEP_PHASES``:
  rendering the views, forward, backward, optimizer, after the step (the EMA of the momentum methods),
  the epoch's running statistics);
- ``operator_ms``: self device time per step by operator group (convolution, batch norm, matrix
  products, copies and casts, the rest), and ``conv_forward_tflops``: what the forward convolutions
  achieved (the profiler's FLOP count of ``aten::conv2d`` over its device time);
- ``<method>-operators.md``: the 30 operators with the most self device time.

It answers what the per-epoch clocks cannot: on one H200 (commit 5346cb7) BYOL's eager step cost 2.1x
SimCLR's where its target's extra forwards predict about 1.33x, and SimCLR's steady epoch used 22% of
the chip's bf16 peak. On a CPU the same figures come from the host's clock (no device events), which
is enough to test the script. ``results.json`` is rewritten after each method, so a call cut short
keeps the methods it profiled. ``--compile step`` against eager says how many of a step's launches
compiling the whole step takes away (``host_ops_per_step``, ``device_ops_per_step``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark_data import DATASETS  # noqa: E402
from benchmarks.lightly_benchmark import ALL_METHODS, add_compile_arguments, recipe, train_config  # noqa: E402
from benchmarks.machine import device_description  # noqa: E402
from ssl_core.augment import Normalization  # noqa: E402
from ssl_core.backbones import build_backbone  # noqa: E402
from ssl_core.device_data import DeviceImages  # noqa: E402
from ssl_core.engine import STEP_PHASES, StepInfo, train  # noqa: E402
from ssl_core.methods.factory import build_method, method_class  # noqa: E402
from ssl_core.precision import resolve_device, seed_everything  # noqa: E402

SPEC = DATASETS["cifar10"]
# Operator groups by the operator's name, the first that matches; "other" holds the elementwise
# operators (ReLU and its backward, the residual adds), reductions and the losses' arithmetic.
OPERATOR_GROUPS = (
    ("convolution", re.compile(r"conv")),
    ("batch_norm", re.compile(r"batch_norm")),
    ("matrix_product", re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$")),
    ("copy_cast", re.compile(r"^aten::(copy_|_to_copy|clone|cat|index|index_select|gather|contiguous)$")),
)
PROFILED_METHODS = tuple(name for name in ALL_METHODS if not method_class(name).needs_teacher)


def operator_group(name: str) -> str:
    """The group of an operator (``aten::cudnn_convolution`` -> ``convolution``); ``other`` if none matches."""
    return next((group for group, pattern in OPERATOR_GROUPS if pattern.search(name)), "other")


# Names of the profiler ranges (record_function) that CUDA's timeline mirrors as "GPU user annotations":
# ours, the profiler's steps, and the optimizers' (for a torch without FunctionEvent.is_user_annotation).
RANGE_PREFIXES = ("ssl:", "ProfilerStep#", "Optimizer.")


def is_range(event: object) -> bool:
    """Whether a profiler event is a named range rather than work: a range's device time is its kernels'."""
    return bool(getattr(event, "is_user_annotation", False)) or event.key.startswith(RANGE_PREFIXES)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by ``(start, end)`` intervals, overlaps counted once (kernels on several streams)."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


class StepClock:
    """The engine's ``on_step``: advances the profiler, and reads the clock after the steps in ``marks``.

    Synchronizing only there keeps the host ahead of the device in between, as in training.
    """

    def __init__(self, profiler: profile, device: torch.device, marks: set[int]) -> None:
        self.profiler, self.device, self.marks = profiler, device, marks
        self.after_step: dict[int, float] = {}  # steps done -> perf_counter once the device finished them

    def __call__(self, info: StepInfo) -> None:
        done = info.epoch * info.steps_per_epoch + info.step_in_epoch + 1
        if done in self.marks:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.after_step[done] = time.perf_counter()
        self.profiler.step()

    def ms_per_step(self, first: int, last: int) -> float:
        """Milliseconds per step from mark ``first`` to mark ``last``."""
        return (self.after_step[last] - self.after_step[first]) * 1e3 / (last - first)


def enclosing_phase(event: object) -> str:
    """The step phase (``ssl:<phase>`` range) an operator ran in; ``outside`` for the loop's own work."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("ssl:"):
            return parent.name.removeprefix("ssl:")
        parent = parent.cpu_parent
    return "outside"


def summarize(profiler: profile, steps: int) -> tuple[dict, list[dict]]:
    """Per-step figures of the profiled window, and every operator's row, most device time first.

    Times are the device's (kernels and copies) where the profiler recorded device events, else the
    host's: on a CPU, or on a GPU whose profiler could not trace it (CUPTI missing), ``clock`` says which.
    """
    events = profiler.events()
    averages = profiler.key_averages()
    on_device = any(e.device_type != DeviceType.CPU for e in events)

    def self_ms(event: object) -> float:
        us = event.self_device_time_total if on_device else event.self_cpu_time_total
        return us / 1e3 / steps

    def total_us(event: object) -> float:
        return event.device_time_total if on_device else event.cpu_time_total

    phases = {name: 0.0 for name in STEP_PHASES}
    operators = []
    for row in averages:
        if row.device_type != DeviceType.CPU:  # the kernels themselves, and the ranges mirrored on the device
            continue
        if row.key.startswith("ssl:"):  # a phase: the device time of every kernel launched inside it
            phases[row.key.removeprefix("ssl:")] = total_us(row) / 1e3 / steps
        elif not is_range(row) and self_ms(row) > 0:
            operators.append(
                {
                    "operator": row.key,
                    "group": operator_group(row.key),
                    "calls": row.count // steps,
                    "self_ms": self_ms(row),
                }
            )
    operators.sort(key=lambda row: -row["self_ms"])
    groups = {group: 0.0 for group, _ in OPERATOR_GROUPS} | {"other": 0.0}
    for row in operators:
        groups[row["group"]] += row["self_ms"]
    # Each forward convolution once: under autocast aten::conv2d calls itself again on the cast inputs.
    conv = [e for e in events if e.name == "aten::conv2d" and getattr(e.cpu_parent, "name", None) != "aten::conv2d"]
    conv_flops, conv_us = sum(e.flops for e in conv), sum(total_us(e) for e in conv)
    # The host's share of a step: every operator it dispatches, down to the innermost (on a GPU most of
    # these launch a kernel, each costing the host microseconds whatever the kernel's size).
    dispatched = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    innermost = [e for e in dispatched if not e.cpu_children]
    by_phase = {name: 0.0 for name in (*STEP_PHASES, "outside")}
    for event in innermost:
        by_phase[enclosing_phase(event)] += 1 / steps
    figures = {
        "clock": "device" if on_device else "host",
        "host_ops_per_step": len(innermost) / steps,
        "host_ops_by_phase": by_phase,
        "phase_ms": phases,
        "operator_ms": groups,
        "conv_forward_tflops": conv_flops / (conv_us * 1e-6) / 1e12 if conv_us > 0 and conv_flops > 0 else None,
    }
    if on_device:
        # Kernels, copies and sets on the device's timeline; the ranges mirrored there span idle time too.
        spans = [
            (e.time_range.start, e.time_range.end)
            for e in events
            if e.device_type != DeviceType.CPU and not is_range(e)
        ]
        if spans:
            window = max(end for _, end in spans) - min(start for start, _ in spans)
            busy = union_length(spans)
            figures["device_ops_per_step"] = len(spans) / steps  # kernels, copies and sets
            figures["device_busy_ms"] = busy / 1e3 / steps
            figures["device_idle_share"] = 1 - busy / window if window > 0 else None
    return figures, operators


def profile_method(name: str, args: argparse.Namespace, device: torch.device) -> tuple[dict, list[dict]]:
    """One short epoch of ``name`` through the engine, the last ``args.steps`` steps profiled."""
    # Steps: warm-up, timed with the profiler off, then with it on: one of the profiler's own warm-up and the
    # recorded ones. No synchronization between those two, so the recorded steps start with the host ahead.
    timed_from, timed_to = args.warmup, args.warmup + args.timed
    recorded_from, steps = timed_to + 1, timed_to + 1 + args.steps
    config = train_config(
        argparse.Namespace(
            epochs=1,
            batch_size=args.batch_size,
            lr=None,
            optimizer="auto",
            seed=0,
            device=args.device,
            precision=args.precision,
            num_workers=0,
            compile=args.compile,
            compile_mode=args.compile_mode,
        ),
        name,
    )
    seed_everything(0)
    backbone = build_backbone(SPEC.backbone, SPEC.image_size)
    method = build_method(name, backbone, recipe(name, SPEC), num_images=steps * args.batch_size)
    # Random pixels: a convolution's cost does not depend on what the image shows.
    pixels = torch.randint(0, 256, (steps * args.batch_size, 3, SPEC.image_size, SPEC.image_size), dtype=torch.uint8)
    images = DeviceImages(pixels, torch.full((len(pixels),), -1)).place(device)
    view = method.view_config(SPEC.image_size, blur_prob=SPEC.blur_prob)
    images.views = method.batch_transform(view, Normalization())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    plan = schedule(wait=timed_to, warmup=recorded_from - timed_to, active=steps - recorded_from, repeat=1)
    with profile(activities=activities, schedule=plan, record_shapes=True, with_flops=True) as profiler:
        clock = StepClock(profiler, device, {timed_from, timed_to, steps})
        with tempfile.TemporaryDirectory() as checkpoints:
            train(method, images, config, Path(checkpoints), on_step=clock)
    figures, operators = summarize(profiler, args.steps)
    result = {
        "method": name,
        "optimizer": config.optimizer,
        "views": method.num_views,
        "step_ms": clock.ms_per_step(timed_from, timed_to),
        "profiled_step_ms": clock.ms_per_step(timed_to, steps),
        **figures,
    }
    return result, operators


def compiled(header: dict) -> str:
    """What was compiled, in words; a profile from before ``--compile`` was eager."""
    scope = header.get("compile", "off")
    if scope == "off":
        return "eager"
    mode = header.get("compile_mode")
    return f"compiled ({'the whole step' if scope == 'step' else 'the networks'}{f', {mode}' if mode else ''})"


def markdown(header: dict, results: list[dict]) -> str:
    phases = " | ".join(STEP_PHASES)
    groups = [group for group, _ in OPERATOR_GROUPS] + ["other"]
    clock = "device" if header["on_device"] else "host (a CPU: no device)"
    lines = [
        f"# Where a training step's time goes ({header['device']}, torch {header['torch']})",
        "",
        f"Batch {header['batch_size']}, {header['precision']}, {compiled(header)}; per step, {clock} ms. "
        f"Steps: {header['warmup']} warm-up, {header['timed']} timed unprofiled, {header['steps']} profiled.",
        "",
        f"| method | step | profiled step | device busy | device idle | host ops | kernels | {phases} |",
        "|---|" + "---|" * (6 + len(STEP_PHASES)),
    ]

    def cell(value: float | None, fmt: str = "{:.2f}") -> str:
        return "" if value is None else fmt.format(value)

    for r in results:
        phase_cells = " | ".join(cell(r["phase_ms"][p]) for p in STEP_PHASES)
        lines.append(
            f"| {r['method']} | {cell(r['step_ms'])} | {cell(r['profiled_step_ms'])} | "
            f"{cell(r.get('device_busy_ms'))} | {cell(r.get('device_idle_share'), '{:.0%}')} | "
            f"{cell(r['host_ops_per_step'], '{:,.0f}')} | {cell(r.get('device_ops_per_step'), '{:,.0f}')} | "
            f"{phase_cells} |"
        )
    ops_phases = (*STEP_PHASES, "outside")
    lines += [
        "",
        "Host operators per step by phase (`outside`: the loop's own, between the phases):",
        "",
        "| method | " + " | ".join(ops_phases) + " |",
        "|---|" + "---|" * len(ops_phases),
    ]
    for r in results:
        by_phase = r.get("host_ops_by_phase", {})  # absent from results written before it was counted
        lines.append(f"| {r['method']} | " + " | ".join(cell(by_phase.get(p), "{:,.0f}") for p in ops_phases) + " |")
    lines += [
        "",
        "Self time by operator group, ms per step, and the forward convolutions' achieved TFLOP/s:",
        "",
        "| method | " + " | ".join(groups) + " | conv forward TFLOP/s |",
        "|---|" + "---|" * (len(groups) + 1),
    ]
    for r in results:
        group_cells = " | ".join(cell(r["operator_ms"][g]) for g in groups)
        lines.append(f"| {r['method']} | {group_cells} | {cell(r['conv_forward_tflops'], '{:.3g}')} |")
    untraced = [r["method"] for r in results if header["on_device"] and r["clock"] == "host"]
    if untraced:
        lines += [
            "",
            f"No device events were recorded for {', '.join(untraced)} (no CUPTI?): their times are the host's.",
        ]
    return "\n".join(lines) + "\n"


def operators_markdown(name: str, operators: list[dict], rows: int = 30) -> str:
    lines = [
        f"# {name}: the operators with the most self time, ms per step",
        "",
        "| operator | group | calls per step | ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{r['operator']}` | {r['group']} | {r['calls']} | {r['self_ms']:.3f} |" for r in operators[:rows]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        default=",".join(PROFILED_METHODS),
        help=f"comma-separated, profiled in this order; any of {','.join(PROFILED_METHODS)}",
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=8, help="steps before timing (cuDNN's autotuning)")
    parser.add_argument("--timed", type=int, default=10, help="steps timed with the profiler off")
    parser.add_argument("--steps", type=int, default=3, help="steps recorded by the profiler")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16-mixed", choices=("fp32", "bf16-mixed"))
    add_compile_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(PROFILED_METHODS))
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown or 'none given'}; choose from {','.join(PROFILED_METHODS)}")
    for option in ("batch_size", "warmup", "timed", "steps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    device = resolve_device(args.device)
    header = {
        "device": device_description(device),
        "on_device": device.type == "cuda",
        "torch": torch.__version__,
        **{
            key: getattr(args, key)
            for key in ("batch_size", "precision", "compile", "compile_mode", "warmup", "timed", "steps")
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in methods:
        result, operators = profile_method(name, args, device)
        results.append(result)
        (args.out / f"{name}-operators.md").write_text(operators_markdown(name, operators))
        (args.out / "results.json").write_text(json.dumps({**header, "results": results}, indent=2) + "\n")
        (args.out / "results.md").write_text(markdown(header, results))
        print(f"{name}: step {result['step_ms']:.2f} ms, phases {result['phase_ms']}", flush=True)
    print(markdown(header, results), end="")


if __name__ == "__main__":
    main()
