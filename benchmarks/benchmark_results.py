"""A benchmark run's results: a :class:`MethodResult` per method, in ``results.json`` and ``results.md``.

Methods may train in separate calls (one per GPU call): :func:`previous_results` reads
back what an earlier call of the same setup wrote, so the files hold every method.
"""

from __future__ import annotations

import argparse
import json
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class MethodResult:
    """One method's row: its recipe, kNN curve and label-free scores per epoch, clocks and peak memory."""

    method: str
    epochs: int = 0
    batch_size: int = 0
    lr: float = 0.0
    optimizer: str = "sgd"  # results from before LARS were all SGD
    knn_per_epoch: list[float] = field(default_factory=list)
    final_knn_top1: float = 0.0
    best_knn_top1: float = 0.0
    best_epoch: int = 0
    random_init_knn_top1: float = 0.0
    # Training throughput: train images x epochs / train_seconds; views per image is the method's.
    images_per_second: float | None = None
    mean_eval_seconds: float | None = None
    # {epoch, knn_top1, rankme, alignment, uniformity} per evaluated epoch; empty in results from before them.
    per_epoch: list[dict] = field(default_factory=list)
    # The random-init backbone's Evaluation as a dict (the same for every method of a run).
    random_init: dict | None = None
    train_seconds: float = 0.0
    # From building the method to its saved model, summed over the calls that trained it (wall_clock.py).
    wall_seconds: float | None = None
    calls: int | None = None
    peak_gpu_memory_gb: float | None = None
    peak_host_memory_gb: float | None = None
    collapsed: bool = False


def read_epoch_log(path: Path) -> dict[str, dict]:
    """Per-epoch evaluations by epoch number; a log from before the label-free scores holds bare kNN floats."""
    log = json.loads(path.read_text())
    return {epoch: entry if isinstance(entry, dict) else {"knn_top1": entry} for epoch, entry in log.items()}


def markdown(results: list[MethodResult], header: dict) -> str:
    lines = [
        f"# {header['dataset']} kNN benchmark ({header['device']})",
        "",
        "Commands (in order; a later run of a method replaced its earlier result):",
        *[f"- `{command}`" for command in header.get("commands", [header.get("command")])],
        "",
        f"Train images: {header['train_images']}, test images: {header['test_images']}, "
        f"backbone {header['backbone']}, batch {header['batch_size']}, {header['epochs']} epoch(s), "
        f"{header['precision']}"
        + (", SimCLR forwards each view on its own." if header.get("simclr_forward") == "per-view" else "."),
        "",
        "| method | epochs | lr | kNN top-1 final | kNN top-1 best (epoch) | random init | RankMe final "
        "| train time (no eval) | images/s | eval time | wall time | peak GPU mem | peak host mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        memory = f"{r.peak_gpu_memory_gb:.1f} GB" if r.peak_gpu_memory_gb is not None else "n/a"
        host = f"{r.peak_host_memory_gb:.1f} GB" if r.peak_host_memory_gb is not None else "n/a"
        duration = seconds_or_minutes(r.train_seconds)
        wall = "n/a" if r.wall_seconds is None else f"{seconds_or_minutes(r.wall_seconds)} ({plural(r.calls, 'call')})"
        rank = f"{r.per_epoch[-1]['rankme']:.1f}" if r.per_epoch else "n/a"
        speed = f"{r.images_per_second:,.0f}" if r.images_per_second else "n/a"
        eval_time = f"{r.mean_eval_seconds:.2f} s" if r.mean_eval_seconds is not None else "n/a"
        lr = f"{r.lr:g} LARS" if r.optimizer == "lars" else f"{r.lr:g}"
        lines.append(
            f"| {r.method} | {r.epochs} | {lr} | {r.final_knn_top1:.4f} | {r.best_knn_top1:.4f} ({r.best_epoch}) | "
            f"{r.random_init_knn_top1:.4f} | {rank} | {duration} | {speed} | {eval_time} | {wall} | {memory} | {host} |"
        )
    random_init = next((r.random_init for r in results if r.random_init is not None), None)
    if random_init is not None:
        lines += [
            "",
            f"Random init: RankMe {random_init['rankme']:.1f}, alignment {random_init['alignment']:.3f}, "
            f"uniformity {random_init['uniformity']:.3f}. RankMe is the effective rank of the "
            f"{header['train_images']} train-split eval embeddings (the kNN bank); every epoch's RankMe, "
            f"alignment and uniformity (on {header['label_free_pairs']} train images) are in results.json.",
        ]
    wall_time = (
        "Wall time runs from building a method to its saved model, over every call that trained it (a call "
        "resumes from the last checkpoint): compilation, training, and the kNN evaluation and checkpoint after "
        "every epoch."
    )
    if "setup_seconds" in header:
        wall_time += (
            " Not in it: the run's one-time set-up (extracting and decoding the data, the random-init evaluation), "
            f"{seconds_or_minutes(header['setup_seconds'])} in the last call."
        )
    lines += [
        "",
        wall_time,
        "",
        "Peak host memory per method is the process's peak RSS while that method trained and was "
        f"evaluated (n/a: resumed after its last epoch, nothing trained); over the whole run it was "
        f"{header['peak_host_memory_gb']:.1f} GB. Peak GPU memory is torch.cuda.max_memory_allocated "
        "(n/a on a CPU).",
    ]
    for method, error in header.get("failed", {}).items():
        lines += ["", f"**{method} failed** and has no result: {error}"]
    return "\n".join(lines) + "\n"


def seconds_or_minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def plural(count: int | None, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def write_results(out: Path, header: dict, results: list[MethodResult]) -> None:
    """``results.json`` and ``results.md`` of the finished methods, in the order given."""
    # Each method reset the peak counter: the run's peak is the largest of theirs.
    header["peak_host_memory_gb"] = max(
        [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20]
        + [r.peak_host_memory_gb for r in results if r.peak_host_memory_gb is not None]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"header": header, "results": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    (out / "results.md").write_text(markdown(results, header))


def previous_results(out: Path, setup: dict, parser: argparse.ArgumentParser) -> tuple[dict, dict[str, MethodResult]]:
    """The header and per-method results already in ``out/results.json``, if it holds the same setup.

    Raises (via ``parser.error``) when it holds another setup, so no result is overwritten by accident.
    """
    path = out / "results.json"
    if not path.exists():
        return {}, {}
    report = json.loads(path.read_text())
    report["header"].setdefault("loader", "pil")  # results from before --loader
    report["header"].setdefault("simclr_forward", "joint")  # and from before --simclr-forward
    differs = {
        key: (report["header"].get(key), value) for key, value in setup.items() if report["header"].get(key) != value
    }
    if differs:
        parser.error(f"{path} holds results of another setup ({differs}, as (there, now)); choose another --out")
    header = report["header"]
    header.setdefault("commands", [header["command"]] if "command" in header else [])  # files from before "commands"
    return header, {r["method"]: MethodResult(**r) for r in report["results"]}
