"""One overview of every benchmark run: a table per dataset and a kNN-per-epoch plot per run.

    python benchmarks/summarize.py            # reads benchmarks/results/*/results.json

Writes ``benchmarks/results/README.md`` (methods x runs, next to the lightly
reference where one exists) and ``knn_per_epoch.png`` in each run's folder. It
runs where the project is installed (it needs matplotlib); the benchmark itself
does not, so GPU machines only need torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ssl_core.methods import METHOD_NAMES  # noqa: E402  (torch-free: the one list of methods)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# kNN top-1 of the lightly CIFAR-10 benchmark: ResNet-18, 200 epochs, batch 512, RTX A6000.
LIGHTLY_CIFAR10_200_EPOCHS = {
    "simclr": 0.848,
    "byol": 0.868,
    "moco": 0.847,
    "simsiam": 0.764,
    "dino": 0.813,
    "barlowtwins": 0.819,
}


def final_with_gain(result: dict) -> str:
    """``0.302 (+0.039)``: final kNN top-1 and its gain over random init."""
    final = result["final_knn_top1"]
    return f"{final:.3f} ({final - result['random_init_knn_top1']:+.3f})"


def load_runs(results_dir: Path) -> dict[str, dict]:
    """Every ``<run>/results.json`` of ``lightly_benchmark.py`` under ``results_dir``, by run folder name.

    Other benchmarks' folders (curation, label-free vs kNN, distillation) hold results.json files of their own
    shape: skipped.
    """
    reports = {path.parent.name: json.loads(path.read_text()) for path in sorted(results_dir.glob("*/results.json"))}
    return {name: r for name, r in reports.items() if is_knn_benchmark(r)}


def is_knn_benchmark(report: dict) -> bool:
    """A ``lightly_benchmark.py`` report: a dataset in its header, and per method a learning rate and kNN curve."""
    results = report.get("results")
    return (
        "dataset" in report.get("header", {})
        and isinstance(results, list)
        and all("lr" in r and "knn_per_epoch" in r for r in results)
    )


def plot_run(name: str, run: dict, path: Path) -> Path:
    """kNN top-1 after each epoch, one line per method, random init dashed."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for result in sorted(run["results"], key=lambda r: METHOD_NAMES.index(r["method"])):
        epochs = range(1, len(result["knn_per_epoch"]) + 1)
        ax.plot(epochs, result["knn_per_epoch"], marker="o", label=f"{result['method']} (lr {result['lr']:g})")
    random_init = run["results"][0]["random_init_knn_top1"]
    ax.axhline(random_init, color="gray", linestyle="--", label=f"random init {random_init:.3f}")
    header = run["header"]
    ax.set(
        xlabel="epoch",
        ylabel="kNN top-1 (k=200)",
        title=f"{name}: {header['backbone']}, {header['train_images']} train images, {header['device']}",
    )
    ax.title.set_fontsize(8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overview(runs: dict[str, dict]) -> str:
    """Markdown: per dataset, methods as rows and runs as columns (final kNN, gain over random init)."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `python benchmarks/summarize.py` from the `results.json` of each run folder; each folder's",
        "`results.md` has the exact command, machine and timings. Cells: final-epoch kNN top-1",
        "(k=200, t=0.1) and, in brackets, its gain over the same backbone at random init.",
        "",
    ]
    for dataset in sorted({run["header"]["dataset"] for run in runs.values()}):
        names = [name for name, run in runs.items() if run["header"]["dataset"] == dataset]
        columns = [f"[{name}]({name}/results.md)" for name in names]
        reference = dataset == "cifar10"
        lines += [f"## {dataset}", ""]
        for name in names:
            h = runs[name]["header"]
            lines.append(
                f"- `{name}`: {h['device']}, {h['backbone']}, {h['train_images']} train / "
                f"{h['test_images']} test images, {h['epochs']} epoch(s), batch {h['batch_size']}, {h['precision']}."
            )
        lines += [
            "",
            "| method | " + " | ".join(columns) + (" | lightly, 200 epochs |" if reference else " |"),
            "|---" * (len(columns) + 1 + reference) + "|",
        ]
        for method in METHOD_NAMES:
            cells = []
            for name in names:
                result = next((r for r in runs[name]["results"] if r["method"] == method), None)
                cells.append("" if result is None else final_with_gain(result))
            if any(cells):
                extra = (
                    [f"{LIGHTLY_CIFAR10_200_EPOCHS[method]:.3f}" if method in LIGHTLY_CIFAR10_200_EPOCHS else ""]
                    if reference
                    else []
                )
                lines.append(f"| {method} | " + " | ".join(cells + extra) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of run folders")
    args = parser.parse_args(argv)
    runs = load_runs(args.results)
    if not runs:
        parser.error(f"no */results.json under {args.results}")
    for name, run in runs.items():
        plot_run(name, run, args.results / name / "knn_per_epoch.png")
    (args.results / "README.md").write_text(overview(runs))
    print(f"wrote {args.results / 'README.md'} and {len(runs)} plot(s)")


if __name__ == "__main__":
    main()
