"""Does curation pay? The whole pipeline on curated vs raw data, same budget, kNN of each.

    python benchmarks/curation_pays.py --seeds 0 1 --out benchmarks/results/curation-pays

Each run is ``sslpipe run`` (the installed project's code) in a fresh copy of this
commit's params.yaml and default data (``git archive``), with ``--set`` overrides: ``curated`` keeps the
default ``curate.drop``, ``raw`` sets ``curate.drop=[]`` (curate still reports, drops
nothing). Same epochs and batch size in both, so the same number of steps within
the few images curation drops. Seeds (``teacher.seed`` and ``pretrain.seed``) are
varied to show how much of a difference is run-to-run noise. ``--set`` adds
overrides to every run, e.g. ``--set ingest.source=/data/other.tar.gz``.
Writes results.json and results.md to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_description  # noqa: E402

VARIANTS = {"curated": [], "raw": ["curate.drop=[]"]}


def run_pipeline(overrides: list[str], work: Path) -> dict:
    """``sslpipe run`` in a fresh copy of the committed project; returns its metrics and curation counts."""
    work.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    command = [str(Path(sys.executable).parent / "sslpipe"), "run"]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    subprocess.run(command, cwd=work, check=True, env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    metrics = json.loads((work / "reports/evaluate/metrics.json").read_text())
    counts = json.loads((work / "data/curated/report.json").read_text())["counts"]
    return {"minutes": round((time.perf_counter() - started) / 60, 1), "metrics": metrics, "curation": counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": commit.stdout.strip(),
        "machine": cpu_description(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="curation-pays-") as tmp:
        for seed in args.seeds:
            for variant, overrides in VARIANTS.items():
                seeded = [*args.set, *overrides, f"teacher.seed={seed}", f"pretrain.seed={seed}"]
                run = run_pipeline(seeded, Path(tmp) / f"{variant}-{seed}")
                results["runs"].append({"variant": variant, "seed": seed, "overrides": seeded, **run})
                print(variant, seed, run["metrics"]["student"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Does curation pay? Curated vs raw data, same pipeline and budget",
        "",
        f"`{results['command']}` at commit {results['commit']}; machine: {results['machine']}.",
        "",
        "| variant | seed | images kept | student kNN top-1 | without leaked queries | random init | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        student, random_init = run["metrics"]["student"], run["metrics"]["random_init"]
        lines.append(
            f"| {run['variant']} | {run['seed']} | {run['curation']['kept']} / {run['curation']['images']} | "
            f"{student['top1']:.3f} | {student.get('top1_without_leaks', float('nan')):.3f} | "
            f"{random_init['top1']:.3f} | {run['minutes']} |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
