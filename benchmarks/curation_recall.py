"""Recall and precision of the curate stage on real images with planted problems.

    python benchmarks/curation_recall.py --dataset cifar10 --out benchmarks/results/curation-cifar10
    python benchmarks/curation_recall.py --dataset imagenette --out benchmarks/results/curation-imagenette
    # compare embedders (a model file of a pipeline run, e.g. the teacher):
    python benchmarks/curation_recall.py --dataset cifar10 --embedders pixels models/teacher/model.pt --out ...

Builds a corpus (:mod:`benchmarks.curation_corpus`), runs the curate stage on it
exactly as the pipeline does (``tasks.curate.run``, default params but for the
embedder), and scores ``report.json`` against the truth:

- exact duplicates: planted groups found whole, and groups that are not planted;
- near duplicates and leaks: a planted copy is found when its group (or leak)
  holds its original. Precision counts the pairs inside every reported group
  that holds a planted copy: a pair is right when both images come from the same
  original. Groups made only of untouched originals are the dataset's own near
  duplicates (CIFAR has many): not counted, shown in ``natural_groups.png``;
- quality: share of planted problems flagged, share of untouched originals flagged.

Also sweeps the near-duplicate threshold over the aligned similarity of every
candidate pair (pair level, before grouping), for each embedder, and reports the
candidate recall (share of planted pairs among the embedding neighbours at all).
Writes results.json, results.md and contact sheets to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.curation_corpus import CorpusSize, build_corpus  # noqa: E402
from benchmarks.machine import cpu_description  # noqa: E402
from ssl_core.curation.alignment import aligned_similarity  # noqa: E402
from ssl_core.curation.neighbors import SearchSettings, build_index, pairs_above, search  # noqa: E402
from ssl_core.curation.scan import scan_images  # noqa: E402
from ssl_core.manifest import read_manifest  # noqa: E402

DATASETS = {"cifar10": "cifar10-jpeg.tar.gz", "imagenette": "imagenette-128.tar.gz"}
THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--embedders", nargs="+", default=["pixels"], help="pixels and/or model.pt files")
    parser.add_argument("--train-originals", type=int, default=CorpusSize.train_originals)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep-twins", action="store_true", help="keep originals that are the dataset's own near duplicates"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="curate params, e.g. near_duplicates.similarity=0.95",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from tasks.cli import parse_overrides
    from tasks.curate import run as curate  # the stage itself; tasks needs the pipeline's dependencies
    from tasks.params import parse_params, set_dotted

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else str(argv),
        "machine": cpu_description(),
        "dataset": args.dataset,
        "embedders": {},
    }
    with tempfile.TemporaryDirectory(prefix="curation-bench-") as tmp:
        corpus = Path(tmp) / "corpus"
        size = CorpusSize(train_originals=args.train_originals)
        started = time.perf_counter()
        twins = None if args.keep_twins else 0.85
        truth = build_corpus(args.datasets / DATASETS[args.dataset], corpus, size, args.seed, twins)
        results["corpus"] = {
            "images": len(truth["origin"]),
            "planted": _count(truth),
            "twin_similarity": twins,
            "originals_left_out_as_twins": truth["originals_left_out_as_twins"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        for embedder in args.embedders:
            raw = {"curate": {"embedder": embedder, "selection": {"size": 100}}}
            for key, value in parse_overrides(args.set).items():  # as `sslpipe --set`, keys under curate.
                set_dotted(raw, f"curate.{key}", value)
            params = parse_params(raw)
            started = time.perf_counter()
            report = curate(
                params.curate, params.data.train_split, params.data.test_split, corpus, Path(tmp) / "curated"
            )
            seconds = time.perf_counter() - started
            name = Path(embedder).parent.name or embedder if embedder != "pixels" else "pixels"
            scored = score_report(report, truth)
            scored["stage_seconds"] = round(seconds, 1)
            scored["params"] = {
                "near_duplicates": params.curate.near_duplicates.model_dump(),
                "leakage_similarity": params.curate.leakage_similarity,
            }
            scored["sweep"] = sweep(corpus, truth, embedder, params.curate.near_duplicates.neighbors)
            results["embedders"][name] = scored
            _contact_sheet(corpus, scored.pop("natural_group_examples"), args.out / f"natural_groups-{name}.png")
            _contact_sheet(corpus, scored.pop("false_group_examples"), args.out / f"false_groups-{name}.png")
            _contact_sheet(corpus, scored.pop("missed_examples"), args.out / f"missed-{name}.png")
            if name == "pixels" or len(args.embedders) == 1:
                (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(render_markdown(results))
    print((args.out / "results.md").read_text())
    return 0


def _count(truth: dict) -> dict:
    counts: dict[str, int] = {}
    for item in truth["planted"]:
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    return counts


def score_report(report: dict, truth: dict) -> dict:
    """Recall and precision of every check of ``report`` against the corpus truth."""
    origin = truth["origin"]
    planted = {item["path"]: item for item in truth["planted"]}
    by_kind: dict[str, list[dict]] = {}
    for item in truth["planted"]:
        by_kind.setdefault(item["kind"], []).append(item)

    exact_truth = {}
    for item in by_kind.get("exact_duplicate", []) + [i for i in by_kind.get("leak", []) if i["edit"] == "none"]:
        exact_truth.setdefault(item["origin"], {item["origin"]}).add(item["path"])
    exact_found = [frozenset(group) for group in report["exact_duplicates"]]
    exact = {
        "planted_groups": len(exact_truth),
        "found_whole": sum(frozenset(g) in exact_found for g in exact_truth.values()),
        "false_groups": sum(g not in {frozenset(t) for t in exact_truth.values()} for g in exact_found),
    }

    group_of = {
        path: n for n, group in enumerate(report["near_duplicates"] + report["exact_duplicates"]) for path in group
    }
    near_items = by_kind.get("near_duplicate", [])
    found = [
        group_of.get(i["path"]) is not None and group_of.get(i["path"]) == group_of.get(i["origin"]) for i in near_items
    ]
    per_edit: dict[str, list[bool]] = {}
    for item, hit in zip(near_items, found, strict=True):
        per_edit.setdefault(item["edit"] if "+" not in item["edit"] else "two edits", []).append(hit)
    right = total = 0
    natural, false_groups = [], []
    for group in report["near_duplicates"]:
        if not any(p in planted for p in group):
            natural.append(group)
            continue
        pairs = list(combinations(group, 2))
        good = sum(origin[a] == origin[b] for a, b in pairs)
        right, total = right + good, total + len(pairs)
        if good < len(pairs):
            false_groups.append(group)
    near = {
        "planted": len(near_items),
        "recall": round(float(np.mean(found)), 4) if found else None,
        "recall_per_edit": {edit: round(float(np.mean(hits)), 3) for edit, hits in per_edit.items()},
        "pair_precision": round(right / total, 4) if total else None,
        "groups_with_a_wrong_pair": len(false_groups),
        "natural_groups": len(natural),
    }

    leak_items = by_kind.get("leak", [])
    reported = {(leak["train"], leak["test"]) for leak in report["leakage"]}
    leak_tests = {leak["test"] for leak in report["leakage"]}
    leak = {
        "planted": len(leak_items),
        "recall": round(float(np.mean([(i["path"], i["origin"]) in reported for i in leak_items])), 4)
        if leak_items
        else None,
        "reported": len(report["leakage"]),
        "wrong_pairs": sum(origin[t] != origin[s] and (s in planted or t in planted) for s, t in reported),
        "natural": sum(s not in planted for s, _ in reported),
        "test_images_with_a_leak": len(leak_tests),
    }

    originals = [p for p, o in origin.items() if p == o]
    quality = {}
    for issue, flagged in report["quality"].items():
        items = by_kind.get(issue, [])
        flagged_set = set(flagged)
        quality[issue] = {
            "planted": len(items),
            "recall": round(float(np.mean([i["path"] in flagged_set for i in items])), 4) if items else None,
            "false_positive_rate_on_originals": round(sum(p in flagged_set for p in originals) / len(originals), 4),
        }
    missed = [[i["origin"], i["path"]] for i, hit in zip(near_items, found, strict=True) if not hit]
    return {
        "exact_duplicates": exact,
        "near_duplicates": near,
        "leakage": leak,
        "quality": quality,
        "outliers": len(report["outliers"]),
        "selection": report["selection"]["metrics"] if report.get("selection") else None,
        "natural_group_examples": natural[:30],
        "false_group_examples": false_groups[:30],
        "missed_examples": missed[:30],
    }


def sweep(corpus: Path, truth: dict, embedder: str, neighbors: int) -> dict:
    """Pair-level recall/precision of the aligned similarity over thresholds, and the candidates' recall."""
    records = read_manifest(corpus / "manifest.csv")
    paths = [r.path for r in records]
    scan = scan_images(corpus, paths, with_pixel_embeddings=True, num_workers=2)
    if embedder == "pixels":
        embeddings = scan.pixel_embeddings
    else:
        from ssl_core.curation.embedders import model_embeddings

        embeddings = model_embeddings(Path(embedder), corpus)
    similarities, ids = search(build_index(embeddings, SearchSettings()), embeddings, neighbors + 1)
    first, second, _ = pairs_above(similarities, ids, -np.inf)
    aligned = aligned_similarity(scan.renditions, first, second)
    origin = [truth["origin"][p] for p in paths]
    index = {p: i for i, p in enumerate(paths)}
    duplicate_kinds = {"near_duplicate", "exact_duplicate", "leak"}
    planted_pairs = {
        tuple(sorted((index[i["path"]], index[i["origin"]]))) for i in truth["planted"] if i["kind"] in duplicate_kinds
    }
    candidate_pairs = set(zip(first.tolist(), second.tolist(), strict=True))
    is_planted_copy = np.array([p in {i["path"] for i in truth["planted"]} for p in paths])
    involved = is_planted_copy[first] | is_planted_copy[second]  # pairs of two originals: unknown truth, left out
    same = np.array([origin[a] == origin[b] for a, b in zip(first, second, strict=True)])
    planted_mask = np.array([(a, b) in planted_pairs for a, b in zip(first.tolist(), second.tolist(), strict=True)])
    # Pairs of two untouched originals have no truth, but two images of different
    # classes are not one shot: a lower bound on the errors among the dataset's own pairs.
    label = [p.split("/")[2] for p in paths]
    natural = ~involved
    other_class = np.array([label[a] != label[b] for a, b in zip(first, second, strict=True)])
    rows = []
    for threshold in THRESHOLDS:
        hit = aligned >= threshold
        recall = (hit & planted_mask).sum() / len(planted_pairs)
        counted = hit & involved
        precision = (counted & same).sum() / max(1, counted.sum())
        rows.append(
            {
                "threshold": threshold,
                "recall": round(float(recall), 4),
                "precision": round(float(precision), 4),
                "dataset_pairs": int((hit & natural).sum()),
                "dataset_pairs_of_two_classes": int((hit & natural & other_class).sum()),
            }
        )
    return {
        "candidate_recall": round(len(candidate_pairs & planted_pairs) / len(planted_pairs), 4),
        "neighbors": neighbors,
        "pairs_checked": int(len(first)),
        "thresholds": rows,
    }


def _contact_sheet(corpus: Path, groups: list[list[str]], path: Path, cell: int = 64) -> None:
    if not groups:
        path.unlink(missing_ok=True)
        return
    width = max(len(g) for g in groups[:30])
    sheet = Image.new("RGB", (min(width, 8) * (cell + 4), len(groups) * (cell + 4)), "white")
    for row, group in enumerate(groups):
        for col, member in enumerate(group[:8]):
            with Image.open(corpus / member) as image:
                sheet.paste(
                    image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST),
                    (col * (cell + 4), row * (cell + 4)),
                )
    sheet.save(path)


def render_markdown(results: dict) -> str:
    corpus = results["corpus"]
    lines = [
        f"# Curation recall and precision: {results['dataset']}",
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {results['machine']}. Corpus: {corpus['images']} images, planted {corpus['planted']}; "
        f"{corpus['originals_left_out_as_twins']} drawn originals left out as the dataset's own near "
        f"duplicates (aligned similarity >= {corpus['twin_similarity']}).",
        "",
    ]
    for name, r in results["embedders"].items():
        near, exact, leak = r["near_duplicates"], r["exact_duplicates"], r["leakage"]
        lines += [
            f"## embedder `{name}` (stage: {r['stage_seconds']} s; {r['params']})",
            "",
            f"- exact duplicates: {exact['found_whole']}/{exact['planted_groups']} planted groups found whole, "
            f"{exact['false_groups']} groups not planted",
            f"- near duplicates: recall {near['recall']}, pair precision {near['pair_precision']} "
            f"({near['groups_with_a_wrong_pair']} groups with a wrong pair; "
            f"{near['natural_groups']} groups of the dataset's own near duplicates)",
            f"- recall per edit: {near['recall_per_edit']}",
            f"- leaks: recall {leak['recall']} of {leak['planted']}, {leak['wrong_pairs']} wrong pairs, "
            f"{leak['natural']} of the dataset's own",
            f"- selection metrics (selected vs random): {r['selection']}",
            "",
            "| quality issue | planted | recall | flagged originals |",
            "|---|---|---|---|",
            *(
                f"| {issue} | {q['planted']} | {q['recall']} | {q['false_positive_rate_on_originals']:.2%} |"
                for issue, q in r["quality"].items()
            ),
            "",
            f"Threshold sweep (pair level; candidate recall {r['sweep']['candidate_recall']} "
            f"with {r['sweep']['neighbors']} neighbours):",
            "",
            "| aligned similarity >= | recall | precision | dataset's own pairs | of two classes |",
            "|---|---|---|---|---|",
            *(
                f"| {row['threshold']} | {row['recall']} | {row['precision']} | {row['dataset_pairs']} | "
                f"{row['dataset_pairs_of_two_classes']} |"
                for row in r["sweep"]["thresholds"]
            ),
            "",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
