"""How many CIFAR-10 test images have a near duplicate in the training set, next to ciFAIR's count.

    python benchmarks/cifar10_leaks.py --out benchmarks/results/curation-cifar10-full

Ingests all 60,000 images of ``../shared/datasets/cifar10-jpeg.tar.gz`` and runs
the curate stage on them with the pipeline's default params (``--set`` changes
one, e.g. ``--set leakage_similarity=0.9``). Barz & Denzler 2020 ("Do we train on
test data? Purging CIFAR of near-duplicates", the ciFAIR paper) found duplicates
in the training set for 3.3 % of the CIFAR-10 test images, by a CNN's features
and manual inspection. Writes results.json, results.md, ``leaks.png`` (the most
similar leaks and the ones just above the threshold, each test image beside its
training twin) and the stage's report.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_description  # noqa: E402

CIFAIR_CIFAR10_FRACTION = 0.033  # the paper's abstract


def leak_sheet(leaks: list[dict], root: Path, path: Path, cell: int = 64) -> None:
    """Rows of (test image, its training twin, similarity): the 24 most similar leaks and the 24 least."""
    shown = leaks[:24] + (leaks[-24:] if len(leaks) > 48 else leaks[24:])
    columns = 4  # four leak pairs per row
    rows = (len(shown) + columns - 1) // columns
    pair_width = 2 * cell + 60
    sheet = Image.new("RGB", (columns * pair_width, rows * (cell + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, leak in enumerate(shown):
        x, y = (n % columns) * pair_width, (n // columns) * (cell + 18)
        for k, key in enumerate(("test", "train")):
            with Image.open(root / leak[key]) as image:
                sheet.paste(
                    image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x + k * (cell + 2), y)
                )
        draw.text((x + 2 * cell + 6, y + cell // 2 - 6), f"{leak['similarity']:.3f}", fill="black")
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a curate param")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from tasks.cli import parse_overrides
    from tasks.curate import run as curate  # the stage itself: needs the pipeline's dependencies
    from tasks.ingest import run as ingest
    from tasks.params import parse_params, set_dotted

    raw: dict = {"ingest": {"source": str(args.archive)}}
    for key, value in parse_overrides(args.set).items():  # as `sslpipe --set`, keys under curate.
        set_dotted(raw, f"curate.{key}", value)
    params = parse_params(raw)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cifar10-leaks-") as tmp:
        ingested, curated = Path(tmp) / "ingested", Path(tmp) / "curated"
        started = time.perf_counter()
        ingest(params.ingest, ingested)
        ingest_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = curate(params.curate, params.data.train_split, params.data.test_split, ingested, curated)
        curate_seconds = time.perf_counter() - started
        leak_sheet(report["leakage"], ingested, args.out / "leaks.png")
        (args.out / "report.json").write_text((curated / "report.json").read_text())
    num_test = report["splits"][params.data.test_split]
    leaked = report["counts"]["leaked_test_images"]
    results = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": cpu_description(),
        "images": report["num_images"],
        "test_images": num_test,
        "leaked_test_images": leaked,
        "leaked_fraction": round(leaked / num_test, 4),
        "cifair_fraction": CIFAIR_CIFAR10_FRACTION,
        "cifair_count": round(CIFAIR_CIFAR10_FRACTION * num_test),
        "leakage_similarity": params.curate.leakage_similarity,
        "embedder": params.curate.embedder,
        "counts": report["counts"],
        "seconds": {"ingest": round(ingest_seconds, 1), "curate": round(curate_seconds, 1)},
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    counts = report["counts"]
    lines = [
        "# CIFAR-10: test images with a near duplicate in the training set",
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {results['machine']}. Curate stage with default params (embedder `{results['embedder']}`, "
        f"leak when the aligned similarity >= {results['leakage_similarity']}): {curate_seconds:.0f} s for "
        f"{results['images']:,} images (ingest {ingest_seconds:.0f} s).",
        "",
        "| | test images with a training twin | share of the test split |",
        "|---|---|---|",
        f"| this stage | {leaked} | {leaked / num_test:.1%} |",
        f"| ciFAIR (Barz & Denzler 2020) | ~{results['cifair_count']} | {CIFAIR_CIFAR10_FRACTION:.1%} |",
        "",
        f"Also found: {counts['exact_duplicate_groups']} exact duplicate groups, {counts['near_duplicate_groups']} "
        f"near-duplicate groups ({counts['near_duplicate_images']} images), quality flags {counts['quality']}, "
        f"{counts['outliers']} outliers.",
        "",
        "`leaks.png`: the most similar leaks, then those just above the threshold (test image, training twin).",
        "",
    ]
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
