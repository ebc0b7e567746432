"""bf16 autocast against fp32 on the CPU, with and without the instructions that make bf16 fast.

    python benchmarks/cpu_precision.py --out benchmarks/results/cpu-precision-isa

Times a training step of the CIFAR ResNet-18 (forward and backward of ``--batch-size`` 32 px images,
channels_last, SGD) in fp32 and under bf16 autocast, once per instruction-set ceiling, each in a process of
its own: this CPU as it is, then oneDNN (convolutions) and ATen (the other kernels) held to AVX-512 without
its BF16 extension, then to AVX2 (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``). The ceilings stand in
for CPUs without native bf16: most laptops and desktops (AVX2 only) and AVX-512 servers before
AVX512-BF16. ``ssl_core.precision.resolve_precision`` picks ``precision: auto`` from what this measures.

Writes ``results.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import cpu_description  # noqa: E402
from ssl_core.backbones import build_backbone  # noqa: E402
from ssl_core.config_checks import PRECISIONS  # noqa: E402
from ssl_core.precision import autocast, native_bf16, unsupported_precision  # noqa: E402

# (name, environment): what each child process may use; the first is the CPU unrestricted.
CEILINGS = (
    ("this CPU", {}),
    ("AVX-512 without BF16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512"}),
    ("AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
)


def step_ms(precision: str, batch_size: int, warmup: int, timed: int) -> float:
    """Milliseconds per training step of the CIFAR ResNet-18 in ``precision``, in this process."""
    torch.manual_seed(0)
    network = build_backbone("resnet18_cifar", 32).module.to(memory_format=torch.channels_last)
    images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)

    def step() -> None:
        with autocast("cpu", precision):
            loss = network(images).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(timed):
        step()
    return (time.perf_counter() - started) / timed * 1e3


def measure_here(args: argparse.Namespace) -> dict:
    """The precisions a CPU runs (fp32, bf16-mixed), in this process (a child started by :func:`measure`)."""
    cpu_precisions = [p for p in PRECISIONS if unsupported_precision(p, torch.device("cpu")) is None]
    times = {p: step_ms(p, args.batch_size, args.warmup, args.timed) for p in cpu_precisions}
    # What ATen dispatched to under the ceiling: the proof that the child ran under it.
    return {"aten_capability": torch.backends.cpu.get_cpu_capability(), "step_ms": times}


def measure(args: argparse.Namespace, environment: dict[str, str]) -> dict:
    """:func:`measure_here` in a fresh process under ``environment``: the ceilings are read at start-up."""
    command = [sys.executable, __file__, "--child", "--batch-size", str(args.batch_size)]
    command += ["--warmup", str(args.warmup), "--timed", str(args.timed)]
    result = subprocess.run(
        command, env={**os.environ, **environment}, capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    lines = [
        f"# bf16 autocast against fp32 on the CPU ({results['cpu']}, torch {results['torch']})",
        "",
        f"A training step of the CIFAR ResNet-18, batch {results['batch_size']}, {results['threads']} threads; "
        f"{results['timed']} timed steps after {results['warmup']} warm-up. This CPU computes bf16 natively "
        f"(AVX512-BF16 or AMX): {results['native_bf16']}; the ceilings take those instructions away.",
        "",
        "| instructions | ceiling (oneDNN, ATen) | ATen ran | fp32 step, ms | bf16 step, ms | bf16 against fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        ceiling = ", ".join(row["environment"].values()) or "none"
        fp32, bf16 = row["step_ms"]["fp32"], row["step_ms"]["bf16-mixed"]
        speed = f"{fp32 / bf16:.2f}x faster" if bf16 < fp32 else f"{bf16 / fp32:.1f}x slower"
        capability = row["aten_capability"]
        lines.append(f"| {row['name']} | {ceiling} | {capability} | {fp32:,.0f} | {bf16:,.0f} | {speed} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for results.json and results.md")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=4)
    names = [name for name, _ in CEILINGS]
    parser.add_argument("--ceilings", nargs="+", choices=names, default=names, help="the ceilings to measure")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and args.out is None:
        parser.error("--out is required")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure_here(args)))
        return
    results = {
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "timed": args.timed,
        "rows": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, environment in (ceiling for ceiling in CEILINGS if ceiling[0] in args.ceilings):
        results["rows"].append({"name": name, "environment": environment, **measure(args, environment)})
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(markdown(results))
        print(markdown(results).splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
