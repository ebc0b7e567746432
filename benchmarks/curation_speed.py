"""Throughput of curation on this machine: the per-image scan, and neighbour search at a million images.

    python benchmarks/curation_speed.py --out benchmarks/results/curation-speed
    python benchmarks/curation_speed.py --search-vectors 100000 --out /tmp/speed   # a quick run

1. Scan (:func:`ssl_core.curation.scan.scan_images`: decode, pixel hash, quality
   scores, alignment rendition and pixel embedding, one decode each) of real JPEGs
   at 32 px (CIFAR-10) and 128 px (Imagenette), in images per second, with 1 and
   with all cores.
2. Near-duplicate search (:mod:`ssl_core.curation.neighbors`) over N synthetic unit
   vectors of dimension 512 with cluster structure (vectors around 10,000 centres)
   and 1,000 planted near-duplicate pairs (cosine similarity ~0.95): build the
   index, search every vector's 10 neighbours, keep the pairs above 0.9. The
   vectors are read from a float16 file on disk (np.memmap), as a million
   embeddings would be. Reports seconds per phase, the peak resident memory of the
   process (ru_maxrss) and the recall of the planted pairs.
Writes results.json and results.md to ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_description  # noqa: E402
from ssl_core.curation.neighbors import SearchSettings, build_index, pairs_above, search  # noqa: E402
from ssl_core.curation.scan import scan_images  # noqa: E402

ARCHIVES = {32: "cifar10-jpeg.tar.gz", 128: "imagenette-128.tar.gz"}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def extract(archive: Path, count: int, out_dir: Path) -> list[str]:
    """The first ``count`` images of an archive as files in ``out_dir``."""
    paths = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(".jpg"):
                target = out_dir / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                paths.append(member.name)
                if len(paths) == count:
                    break
    with Image.open(io.BytesIO((out_dir / paths[0]).read_bytes())) as image:
        assert image.size[0] in ARCHIVES, image.size
    return paths


def scan_throughput(datasets: Path, count: int) -> list[dict]:
    rows = []
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        for side, name in ARCHIVES.items():
            paths = extract(datasets / name, count, Path(tmp) / str(side))
            scan_images(Path(tmp) / str(side), paths[:200], True, 0)  # warm the file cache and imports
            for workers in sorted({1, cores}):
                started = time.perf_counter()
                scan_images(Path(tmp) / str(side), paths, True, workers)
                seconds = time.perf_counter() - started
                rows.append(
                    {
                        "side_px": side,
                        "images": len(paths),
                        "workers": workers,
                        "images_per_s": round(len(paths) / seconds),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def synthetic_embeddings(path: Path, num: int, dim: int, pairs: int, seed: int) -> np.ndarray:
    """Unit vectors around 10,000 random centres, float16 on disk.

    The last ``pairs`` rows copy earlier rows with a little noise: the planted near duplicates.
    """
    rng = np.random.default_rng(seed)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(num, dim))
    centres = rng.standard_normal((10_000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    chunk = 100_000
    for start in range(0, num - pairs, chunk):
        n = min(chunk, num - pairs - start)
        x = centres[rng.integers(len(centres), size=n)] + 0.08 * rng.standard_normal((n, dim), dtype=np.float32)
        data[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    sources = rng.choice(num - pairs, size=pairs, replace=False)
    copies = data[sources].astype(np.float32) + 0.015 * rng.standard_normal((pairs, dim), dtype=np.float32)
    data[num - pairs :] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    data.flush()
    np.save(path.with_suffix(".sources.npy"), sources)
    return sources


def search_benchmark(num: int, dim: int, pairs: int, settings: SearchSettings) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "embeddings.npy"
        started = time.perf_counter()
        sources = synthetic_embeddings(file, num, dim, pairs, settings.seed)
        generate = time.perf_counter() - started
        embeddings = np.load(file, mmap_mode="r")
        rss_before = peak_rss_gib()
        started = time.perf_counter()
        index = build_index(embeddings, settings)
        build = time.perf_counter() - started
        started = time.perf_counter()
        similarities, ids = search(index, embeddings, settings.neighbors, settings.chunk_size)
        searched = time.perf_counter() - started
        first, second, _ = pairs_above(similarities, ids, 0.9)
        found = set(zip(first.tolist(), second.tolist(), strict=True))
        planted = {(int(s), num - pairs + i) for i, s in enumerate(sources)}
        true_similarity = np.einsum(
            "nd,nd->n", embeddings[sources].astype(np.float32), embeddings[num - pairs :].astype(np.float32)
        )
    return {
        "vectors": num,
        "dim": dim,
        "index": "flat (exact)"
        if num <= settings.exact_up_to
        else f"IVF{int(4 * num**0.5)},SQ8 nprobe {settings.nprobe}",
        "neighbors": settings.neighbors,
        "planted_pairs": pairs,
        "planted_pair_similarity_min": round(float(true_similarity.min()), 4),
        "planted_pairs_found_above_0.9": round(len(found & planted) / pairs, 4),
        "pairs_above_0.9": len(found),
        "seconds": {
            "generate": round(generate, 1),
            "build": round(build, 1),
            "search": round(searched, 1),
            "total": round(build + searched, 1),
        },
        "peak_rss_gib": {"before_index": round(rss_before, 2), "after_search": round(peak_rss_gib(), 2)},
        "data_on_disk_gib": round(num * dim * 2 / 2**30, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--scan-images", type=int, default=6000)
    parser.add_argument("--search-vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import faiss

    results = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{cpu_description()}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)",
        "scan": [] if args.skip_scan else scan_throughput(args.datasets, args.scan_images),
    }
    results["search"] = search_benchmark(args.search_vectors, args.dim, 1000, SearchSettings())
    print(results["search"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    s = results["search"]
    lines = [
        "# Curation throughput",
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {results['machine']}.",
        "",
        "| scan (decode, hash, quality, rendition, pixel embedding) | workers | images/s |",
        "|---|---|---|",
        *(
            f"| {r['side_px']} px JPEG, {r['images']} images | {r['workers']} | {r['images_per_s']} |"
            for r in results["scan"]
        ),
        "",
        f"Neighbour search: {s['vectors']:,} x {s['dim']} float16 vectors on disk ({s['data_on_disk_gib']} GiB), "
        f"index {s['index']}, "
        f"{s['neighbors']} neighbours each: build {s['seconds']['build']} s, search {s['seconds']['search']} s, "
        f"total {s['seconds']['total']} s; peak resident memory {s['peak_rss_gib']['after_search']} GiB "
        f"({s['peak_rss_gib']['before_index']} GiB before the index). "
        f"Planted pairs (similarity >= {s['planted_pair_similarity_min']}) "
        f"found above 0.9: {s['planted_pairs_found_above_0.9']:.1%}.",
        "",
    ]
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
