"""How well the label-free scores predict kNN accuracy, over the checkpoints of benchmark runs.

    python benchmarks/label_free_vs_knn.py \\
        --results benchmarks/results/cpu-cifar10-4epoch-label-free/results.json \\
        --out benchmarks/results/label-free-vs-knn

Reads the ``results.json`` of ``benchmarks/lightly_benchmark.py`` runs: every method
after every epoch, plus the random-init backbone once per run, is one point (kNN
top-1, RankMe, alignment, uniformity). Each score is oriented so that higher should
mean better (RankMe, -uniformity, -alignment), then compared with kNN top-1:

- Spearman's rho and Kendall's tau over all points, and within each method (its
  epochs and the random init);
- pairwise agreement, the question a promotion gate asks ("is the new checkpoint
  better than the old one?"): over pairs of checkpoints of the same run whose kNN
  top-1 differ by more than ``--min-gap``, the fraction the score orders the same
  way as kNN. A tie of the score counts as a disagreement.

Writes ``results.json``, ``results.md`` and ``label_free_vs_knn.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib.figure import Figure
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, like the other benchmarks

from benchmarks.machine import cpu_description  # noqa: E402
from ssl_core.methods import METHOD_NAMES  # noqa: E402

RANDOM_INIT = "random init"
# Label-free score -> sign that makes "higher predicts better kNN".
PREDICTORS = {"rankme": 1.0, "uniformity": -1.0, "alignment": -1.0}
PREDICTOR_LABELS = {"rankme": "RankMe", "uniformity": "-uniformity", "alignment": "-alignment"}


@dataclass(frozen=True)
class Point:
    """One evaluated checkpoint: a method after ``epoch`` epochs (0 and ``RANDOM_INIT`` for the untrained one)."""

    run: str
    method: str
    epoch: int
    knn_top1: float
    rankme: float
    alignment: float
    uniformity: float

    def score(self, predictor: str) -> float:
        return PREDICTORS[predictor] * getattr(self, predictor)


def load_points(path: Path) -> list[Point]:
    """The random init (once) and every method's evaluated epochs of one ``results.json``."""
    report = json.loads(path.read_text())
    run = path.parent.name
    points = []
    random_init = next((r["random_init"] for r in report["results"] if r.get("random_init")), None)
    if random_init is not None:
        points.append(Point(run, RANDOM_INIT, 0, **random_init))
    for result in report["results"]:
        for entry in result.get("per_epoch", []):
            # Entries also carry timings (train_seconds, eval_seconds) that are no point's concern.
            scores = {name: entry[name] for name in ("epoch", "knn_top1", "rankme", "alignment", "uniformity")}
            points.append(Point(run, result["method"], **scores))
    if len(points) < 2:
        raise ValueError(f"{path} holds no per-epoch label-free scores; rerun lightly_benchmark.py to record them")
    return points


def finite_or_none(value: float) -> float | None:
    """NaN (a constant input, too few points) as JSON null."""
    return None if math.isnan(value) else float(value)


def rank_correlations(points: list[Point]) -> dict[str, dict]:
    """Spearman's rho and Kendall's tau (tau-b) of kNN top-1 with each oriented score, with p-values."""
    knn = [p.knn_top1 for p in points]
    correlations = {}
    for predictor in PREDICTORS:
        scores = [p.score(predictor) for p in points]
        if len(points) < 3:
            correlations[predictor] = {"n": len(points), "spearman": None, "spearman_p": None}
            correlations[predictor].update(kendall=None, kendall_p=None)
            continue
        spearman = stats.spearmanr(knn, scores)
        kendall = stats.kendalltau(knn, scores)
        correlations[predictor] = {
            "n": len(points),
            "spearman": finite_or_none(spearman.statistic),
            "spearman_p": finite_or_none(spearman.pvalue),
            "kendall": finite_or_none(kendall.statistic),
            "kendall_p": finite_or_none(kendall.pvalue),
        }
    return correlations


def pairwise_agreement(pairs: list[tuple[Point, Point]], min_gap: float) -> dict[str, dict]:
    """Per score: of the pairs whose kNN top-1 differ by more than ``min_gap``, how many it orders like kNN."""
    decided = [(a, b) for a, b in pairs if abs(a.knn_top1 - b.knn_top1) > min_gap]
    agreement = {}
    for predictor in PREDICTORS:
        agree = ties = 0
        for a, b in decided:
            gap = a.score(predictor) - b.score(predictor)
            ties += gap == 0
            agree += gap != 0 and (gap > 0) == (a.knn_top1 > b.knn_top1)
        agreement[predictor] = {
            "pairs": len(decided),
            "agree": agree,
            "ties": ties,
            "fraction": agree / len(decided) if decided else None,
        }
    return agreement


def checkpoint_pairs(points: list[Point]) -> dict[str, list[tuple[Point, Point]]]:
    """The pairs a gate could be asked about, always within one run (the same data and evaluation)."""
    finals = {}
    for p in points:
        if p.method != RANDOM_INIT and p.epoch >= finals.get((p.run, p.method), p).epoch:
            finals[(p.run, p.method)] = p
    same_run = [(a, b) for a, b in itertools.combinations(points, 2) if a.run == b.run]
    trained = [(a, b) for a, b in same_run if RANDOM_INIT not in (a.method, b.method)]
    return {
        "all checkpoints": same_run,
        # A gate compares trained candidates; the random init is an outlier of every score.
        "trained checkpoints": trained,
        "final checkpoints of different methods": [
            (a, b) for a, b in itertools.combinations(finals.values(), 2) if a.run == b.run
        ],
        # One training run, random init included: "did this run improve?".
        "one method's checkpoints and the random init": [
            (a, b)
            for a, b in same_run
            if a.method == b.method != RANDOM_INIT or (a.method != b.method and RANDOM_INIT in (a.method, b.method))
        ],
        "one method's epochs": [(a, b) for a, b in trained if a.method == b.method],
    }


def analyse(points: list[Point], min_gap: float) -> dict:
    methods = sorted({p.method for p in points if p.method != RANDOM_INIT}, key=method_order)
    random_inits = [p for p in points if p.method == RANDOM_INIT]
    return {
        "points": [asdict(p) for p in points],
        "min_gap": min_gap,
        "correlations": {
            "all checkpoints": rank_correlations(points),
            "trained checkpoints": rank_correlations([p for p in points if p.method != RANDOM_INIT]),
        },
        "per_method": {
            m: rank_correlations([p for p in random_inits if p.run in runs_of(points, m)] + by_method(points, m))
            for m in methods
        },
        "pairwise": {name: pairwise_agreement(pairs, min_gap) for name, pairs in checkpoint_pairs(points).items()},
    }


def by_method(points: list[Point], method: str) -> list[Point]:
    return [p for p in points if p.method == method]


def runs_of(points: list[Point], method: str) -> set[str]:
    return {p.run for p in by_method(points, method)}


def method_order(method: str) -> int:
    return METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES)


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def pvalue(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def reading(analysis: dict, header: dict) -> list[str]:
    """Plain sentences from the numbers: which score ranks checkpoints best, and how often it orders pairs right."""
    overall, pairwise = analysis["correlations"]["all checkpoints"], analysis["pairwise"]
    ranked = sorted(PREDICTORS, key=lambda k: -(overall[k]["spearman"] or -2))
    best = ranked[0]
    lines = [
        f"- Over all {overall[best]['n']} checkpoints, {PREDICTOR_LABELS[best]} follows kNN top-1 most closely "
        f"(Spearman {fmt(overall[best]['spearman'])}, p = {pvalue(overall[best]['spearman_p'])}); "
        + ", ".join(
            f"{PREDICTOR_LABELS[k]} {fmt(overall[k]['spearman'])} (p = {pvalue(overall[k]['spearman_p'])})"
            for k in ranked[1:]
        )
        + ".",
    ]
    for name, agreement in pairwise.items():
        if agreement["rankme"]["pairs"]:
            lines.append(
                f"- Of the {agreement['rankme']['pairs']} pairs of {name} whose kNN top-1 differ by more than "
                f"{analysis['min_gap']:g}, "
                + ", ".join(
                    f"{PREDICTOR_LABELS[k]} orders {a['agree']} ({100 * a['fraction']:.0f}%)"
                    for k, a in agreement.items()
                )
                + " the same way as kNN; a coin would get half."
            )
    per_method = analysis["per_method"]
    signs = {m: c["rankme"]["spearman"] for m, c in per_method.items()}
    negative = [m for m, rho in signs.items() if rho is not None and rho < 0]
    if negative:
        lines.append(
            f"- Within a method, RankMe moves against kNN for {', '.join(negative)} "
            f"({len(negative)} of {len(signs)} methods)."
        )
    knn = [p["knn_top1"] for p in analysis["points"]]
    accuracy, test_images = sum(knn) / len(knn), min(h["test_images"] for h in header["runs"].values())
    lines.append(
        f"- kNN top-1 itself is noisy: on {test_images} test images its binomial standard error at "
        f"{accuracy:.2f} is {math.sqrt(accuracy * (1 - accuracy) / test_images):.3f}, so a pair "
        f"{analysis['min_gap']:g} apart is not a sure ranking either."
    )
    sizes = sorted({c["rankme"]["n"] for c in per_method.values()})
    lines.append(
        "- The points are not independent (epochs of one method share a trajectory, every method shares the "
        "random init and the data sample), so the p-values overstate the evidence; each within-method rho rests "
        f"on {' or '.join(map(str, sizes))} points."
    )
    return lines


def markdown(analysis: dict, header: dict, notes: str | None) -> str:
    lines = [
        "# Do label-free scores predict kNN accuracy?",
        "",
        "Commands (in order):",
        *[f"- `{command}`" for command in header["commands"]],
        "",
        f"Machine: {header['machine']}. Runs: "
        + "; ".join(
            f"`{run}` ({h['dataset']}, {h['backbone']}, {h['train_images']} train / {h['test_images']} test images, "
            f"{h['epochs']} epoch(s), {h['device']})"
            for run, h in header["runs"].items()
        )
        + ".",
        "",
        "Each point is one checkpoint: a method after each epoch, plus the random-init backbone once per run. "
        "RankMe: effective rank of the train-split eval embeddings (the kNN bank); alignment and uniformity: "
        "two standard views of a fixed sample of train images (`ssl_core.label_free`). Scores are oriented so that "
        "higher should mean better: RankMe, -uniformity, -alignment.",
        "",
        "## Rank correlation with kNN top-1",
        "",
        "| checkpoints | score | n | Spearman rho (p) | Kendall tau (p) |",
        "|---|---|---|---|---|",
    ]
    for subset, correlations in analysis["correlations"].items():
        for predictor, c in correlations.items():
            lines.append(
                f"| {subset} | {PREDICTOR_LABELS[predictor]} | {c['n']} | {fmt(c['spearman'])} "
                f"({pvalue(c['spearman_p'])}) | {fmt(c['kendall'])} ({pvalue(c['kendall_p'])}) |"
            )
    lines += [
        "",
        "## Spearman rho within each method (its epochs and the random init)",
        "",
        "| method | n | " + " | ".join(PREDICTOR_LABELS.values()) + " |",
        "|---" * (2 + len(PREDICTORS)) + "|",
    ]
    for method, correlations in analysis["per_method"].items():
        cells = [fmt(correlations[k]["spearman"]) for k in PREDICTORS]
        lines.append(f"| {method} | {correlations['rankme']['n']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Pairwise agreement (pairs whose kNN top-1 differ by more than {analysis['min_gap']:g})",
        "",
        "The fraction of pairs the score orders the same way as kNN (ties count as wrong), the question a promotion "
        "gate asks.",
        "",
        "| pairs | n | " + " | ".join(PREDICTOR_LABELS.values()) + " |",
        "|---" * (2 + len(PREDICTORS)) + "|",
    ]
    for name, agreement in analysis["pairwise"].items():
        n = agreement["rankme"]["pairs"]
        cells = [
            "n/a" if a["fraction"] is None else f"{100 * a['fraction']:.0f}% ({a['agree']}/{a['pairs']})"
            for a in agreement.values()
        ]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Checkpoints", "", "| run | method | epoch | kNN top-1 | RankMe | alignment | uniformity |"]
    lines.append("|---|---|---|---|---|---|---|")
    for p in analysis["points"]:
        lines.append(
            f"| {p['run']} | {p['method']} | {p['epoch']} | {p['knn_top1']:.4f} | {p['rankme']:.1f} | "
            f"{p['alignment']:.3f} | {p['uniformity']:.3f} |"
        )
    lines += ["", "## Reading", "", *reading(analysis, header)]
    if notes:
        lines += ["", notes.strip()]
    lines += ["", "![kNN top-1 against the label-free scores](label_free_vs_knn.png)"]
    return "\n".join(lines) + "\n"


def plot(points: list[Point], path: Path) -> None:
    """kNN top-1 against each score, one color per method, its epochs joined from the random init."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, len(PREDICTORS))
    methods = sorted({p.method for p in points if p.method != RANDOM_INIT}, key=method_order)
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, predictor in zip(axes, PREDICTORS, strict=True):
        for run in sorted({p.run for p in points}):
            init = [p for p in points if p.run == run and p.method == RANDOM_INIT]
            for method in methods:
                trajectory = init + sorted(
                    (p for p in points if p.run == run and p.method == method), key=lambda p: p.epoch
                )
                if len(trajectory) > len(init):
                    ax.plot(
                        [p.score(predictor) for p in trajectory],
                        [p.knn_top1 for p in trajectory],
                        color=colors[method],
                        marker="o",
                        markersize=3,
                        linewidth=0.8,
                        alpha=0.8,
                    )
            for p in init:
                ax.plot(p.score(predictor), p.knn_top1, marker="*", markersize=12, color="black", linestyle="none")
        ax.set(xlabel=PREDICTOR_LABELS[predictor], ylabel="kNN top-1")
    handles = [axes[0].plot([], [], color=colors[m], marker="o", label=m)[0] for m in methods]
    handles.append(axes[0].plot([], [], color="black", marker="*", linestyle="none", label=RANDOM_INIT)[0])
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(
        "kNN top-1 against label-free scores (higher should be better on every x axis); "
        "each line: the random init (star), then every epoch of one method",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="results.json of benchmark runs")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and the plot")
    parser.add_argument("--min-gap", type=float, default=0.01, help="kNN top-1 difference a pair must exceed")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown added to the reading in results.md")
    args = parser.parse_args(argv)
    try:
        points = [p for path in args.results for p in load_points(path)]
    except ValueError as error:
        parser.error(str(error))
    analysis = analyse(points, args.min_gap)
    reports = {path.parent.name: json.loads(path.read_text())["header"] for path in args.results}
    command = "python benchmarks/label_free_vs_knn.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = {
        "commands": [c for h in reports.values() for c in h.get("commands", [])] + [command],
        "machine": cpu_description(),
        "runs": reports,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"header": header, **analysis}, indent=2) + "\n")
    notes = args.notes.read_text() if args.notes is not None else None
    (args.out / "results.md").write_text(markdown(analysis, header, notes))
    plot(points, args.out / "label_free_vs_knn.png")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
